"""Pseudo-labels of the teacher's weak-view predictions: generalist, specialist, consensus."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from emlabel.methods.cgs.ihed import head_decisions, ihed_consistent, specialist_fused


@dataclasses.dataclass(frozen=True, kw_only=True)
class PseudoLabels:
    """Pseudo-labels (long ``[N, *spatial]``) and their bool masks; specialist fields are
    ``None`` when training without specialists."""

    y_g: torch.Tensor
    """Generalist class map (argmax of the teacher's generalist head), values 0..K."""
    m_g: torch.Tensor
    """M_g: generalist max probability > tau."""
    y_s: torch.Tensor | None = None
    """Specialist-fused class map, values 0..K (see ``specialist_fused``)."""
    m_s: torch.Tensor | None = None
    """M_s: IHED-consistent pixels."""
    decisions: torch.Tensor | None = None
    """c: the K specialists' own decisions ``[N, K, *spatial]`` (values 0/1/2)."""
    y_e: torch.Tensor | None = None
    """Consensus class map (y_g; meaningful where ``m_e``)."""
    m_e: torch.Tensor | None = None
    """M_e: pixels where y_g == y_s."""

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> PseudoLabels:
        """Apply ``fn`` to every tensor field (e.g. CutMix with one shared box)."""
        return PseudoLabels(
            **{
                f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                for f in dataclasses.fields(self)
            }
        )

    def mask_fractions(self) -> dict[str, float]:
        """Fraction of pixels passing each mask (``mask_g``, ``mask_s``, ``mask_e``)."""
        out = {"mask_g": self.m_g.float().mean().item()}
        if self.m_s is not None and self.m_e is not None:
            out["mask_s"] = self.m_s.float().mean().item()
            out["mask_e"] = self.m_e.float().mean().item()
        return out


def generalist_pseudo_labels(probs: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_g, M_g) of generalist probabilities ``[N, K + 1, *spatial]``: argmax, max prob > tau."""
    confidence, y_g = probs.max(dim=1)
    return y_g, confidence > tau


def consensus(y_g: torch.Tensor, y_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_e, M_e): the generalist label and the mask of pixels where y_g and y_s agree."""
    return y_g.clone(), y_g == y_s


@torch.no_grad()
def make_pseudo_labels(
    generalist_logits: torch.Tensor,
    specialist_logits: Sequence[torch.Tensor] | None,
    *,
    tau: float,
    confident_masks: bool = False,
) -> PseudoLabels:
    """All pseudo-labels of one teacher prediction (specialists optional).

    ``confident_masks`` (our addition; False = the spec): M_s also requires every specialist
    head's max probability > tau, and M_e requires agreement where M_g or that M_s holds, so
    no pseudo-label term trains on pixels that no head is sure of.
    """
    y_g, m_g = generalist_pseudo_labels(generalist_logits.softmax(dim=1), tau)
    if not specialist_logits:
        return PseudoLabels(y_g=y_g, m_g=m_g)
    decisions = head_decisions(specialist_logits)
    y_s = specialist_fused([logits.softmax(dim=1) for logits in specialist_logits])
    y_e, m_e = consensus(y_g, y_s)
    m_s = ihed_consistent(decisions)
    if confident_masks:
        sure = torch.stack([lg.softmax(dim=1).amax(dim=1) > tau for lg in specialist_logits])
        m_s = m_s & sure.all(dim=0)
        m_e = m_e & (m_g | m_s)
    return PseudoLabels(
        y_g=y_g,
        m_g=m_g,
        y_s=y_s,
        m_s=m_s,
        decisions=decisions,
        y_e=y_e,
        m_e=m_e,
    )
