"""CGS losses: masked CE + masked Dice, supervised and cross-consistency terms, lambda ramp.

Masks are bool/float ``[N, *spatial]``. Conventions:

* masked CE = sum(CE * m) / (number of pixels): a pixel outside the mask contributes
  nothing and a mostly empty mask gives a small loss (the FixMatch/UniMatch convention).
* masked Dice, per class c (background included, averaged over the classes, sums over
  the batch and all pixels): 1 - (2 sum(p y m) + eps) / (sum(p^2 m) + sum(y^2 m) + eps),
  with ``m`` applied to **every** channel, background too (the authors' public code
  left the background channel unmasked). An empty mask gives 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from emlabel.methods.cgs.pseudo import PseudoLabels
from emlabel.methods.cgs.targets import one_vs_rest, specialist_targets

DICE_EPS = 1e-5
"""Smoothing term of the Dice loss."""


def _mask_like(target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(target, dtype=torch.float32)
    if mask.shape != target.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != target shape {tuple(target.shape)}")
    return mask.to(torch.float32)


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pixel CE of ``logits`` ``[N, C, *spatial]`` vs ``target`` ``[N, *spatial]``, masked,
    summed and divided by the number of pixels."""
    ce = F.cross_entropy(logits, target.long(), reduction="none")
    m = _mask_like(target, mask)
    return (ce * m).sum() / max(ce.numel(), 1)


def masked_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    eps: float = DICE_EPS,
) -> torch.Tensor:
    """Soft Dice loss of softmax(``logits``) vs one-hot ``target``, mask on every channel."""
    num_classes = logits.shape[1]
    p = logits.softmax(dim=1)
    y = F.one_hot(target.long(), num_classes).movedim(-1, 1).to(p.dtype)
    m = _mask_like(target, mask).unsqueeze(1)  # broadcast to all C channels
    dims = (0, *range(2, logits.ndim))
    intersection = (p * y * m).sum(dim=dims)
    denominator = (p * p * m).sum(dim=dims) + (y * y * m).sum(dim=dims)
    dice = (2 * intersection + eps) / (denominator + eps)
    return (1 - dice).mean()


def seg_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """A "seg" term: masked CE + masked Dice."""
    return masked_cross_entropy(logits, target, mask) + masked_dice_loss(logits, target, mask)


def supervised_loss(
    generalist_logits: torch.Tensor,
    specialist_logits: Sequence[torch.Tensor] | None,
    label: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """seg_gen(K + 1 classes) + (1/K) sum_k seg_k(one-vs-rest-vs-other of ``label``).

    Without specialists (``None`` or empty) only seg_gen. Returns (loss, parts).
    """
    gen = seg_loss(generalist_logits, label)
    parts = {"sup_gen": gen}
    if not specialist_logits:
        return gen, parts
    targets = specialist_targets(label, len(specialist_logits))
    spec = torch.stack(
        [seg_loss(logits, t) for logits, t in zip(specialist_logits, targets, strict=True)]
    ).mean()
    parts["sup_spec"] = spec
    return gen + spec, parts


def unsupervised_loss(
    generalist_logits: torch.Tensor,
    specialist_logits: Sequence[torch.Tensor] | None,
    pseudo: PseudoLabels,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-consistency loss of the student's strong-view outputs and the pseudo-labels.

    generalist <- (y_g, M_g) + (y_s, M_s) + (y_e, M_e)          [specialist -> generalist]
    specialist k <- (OVR_k(y_g), M_g) + (c_k, M_s) + (OVR_k(y_e), M_e), mean over k
                                                                 [generalist -> specialist]
    Without specialists only the generalist's (y_g, M_g) term. Returns (loss, parts).
    """
    gen_g = seg_loss(generalist_logits, pseudo.y_g, pseudo.m_g)
    if not specialist_logits:
        return gen_g, {"unsup_gen": gen_g}
    if (
        pseudo.y_s is None
        or pseudo.m_s is None
        or pseudo.decisions is None
        or pseudo.y_e is None
        or pseudo.m_e is None
    ):
        raise ValueError("specialist outputs given but the pseudo-labels have no specialist part")
    gen = gen_g + seg_loss(generalist_logits, pseudo.y_s, pseudo.m_s)
    gen = gen + seg_loss(generalist_logits, pseudo.y_e, pseudo.m_e)
    spec_terms = []
    for index, logits in enumerate(specialist_logits):
        k = index + 1
        term = seg_loss(logits, one_vs_rest(pseudo.y_g, k), pseudo.m_g)
        term = term + seg_loss(logits, pseudo.decisions[:, index], pseudo.m_s)
        term = term + seg_loss(logits, one_vs_rest(pseudo.y_e, k), pseudo.m_e)
        spec_terms.append(term)
    spec = torch.stack(spec_terms).mean()
    return gen + spec, {"unsup_gen": gen, "unsup_spec": spec}


def lambda_schedule(s: float, lambda_max: float = 0.1) -> float:
    """lambda_max * exp(-5 (1 - s)^2) with the run progress ``s`` clipped to [0, 1]."""
    s = min(max(float(s), 0.0), 1.0)
    return lambda_max * math.exp(-5.0 * (1.0 - s) ** 2)
