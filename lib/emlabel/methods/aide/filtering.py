"""Local label filtering: split a batch into clean and suspected-noisy samples.

AIDE judges the samples of network k by the *counterpart's* per-sample segmentation loss:
the samples with the smallest counterpart loss are "clean" (their labels are trusted), the
others "suspected noisy" (their segmentation loss fades and a consistency loss takes over).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from emlabel.methods.aide.losses import seg_loss_per_sample
from emlabel.methods.aide.options import FILTER_CRITERIA


def filter_scores(logits: torch.Tensor, target: torch.Tensor, criterion: str) -> torch.Tensor:
    """The per-sample losses ``[B]`` the filter ranks by (no gradient).

    ``"seg"`` (the spec): Seg = CE + soft Dice. Its Dice term for a sample whose label is
    (nearly) empty is 1 - 1/(sum(p_fg) + 1), close to 1 for any prediction, so with patch
    training the filter marks patches with little foreground as noisy whatever their label
    quality (BU-BIL: 96% of the empty patches). ``"ce"``: the pixel-mean cross-entropy, which
    does not depend on how much foreground a sample has (our addition).
    """
    with torch.no_grad():
        if criterion == "seg":
            return seg_loss_per_sample(logits, target)
        if criterion == "ce":
            return F.cross_entropy(logits, target.long(), reduction="none").flatten(1).mean(dim=1)
    raise ValueError(f"filter criterion must be one of {FILTER_CRITERIA}, got {criterion!r}")


def fraction_count(fraction: float, n: int) -> int:
    """round(fraction * n) with halves rounded up, clipped to [0, n]."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return min(max(math.floor(fraction * n + 0.5), 0), n)


def split_clean_noisy(
    counterpart_losses: torch.Tensor, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(clean_idx, noisy_idx)`` of a batch from the counterpart's losses ``[B]``.

    The ``round(ratio * B)`` samples with the smallest counterpart loss are clean (ties: lower
    index first), the rest suspected noisy. Both index tensors are sorted ascending.
    """
    if counterpart_losses.ndim != 1:
        raise ValueError(f"expected per-sample losses [B], got {tuple(counterpart_losses.shape)}")
    n_clean = fraction_count(ratio, counterpart_losses.shape[0])
    order = torch.argsort(counterpart_losses.detach(), stable=True)
    clean = order[:n_clean].sort().values
    noisy = order[n_clean:].sort().values
    return clean, noisy
