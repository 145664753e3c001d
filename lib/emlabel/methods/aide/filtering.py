"""Local label filtering: split a batch into clean and suspected-noisy samples.

AIDE judges the samples of network k by the *counterpart's* per-sample segmentation loss:
the samples with the smallest counterpart loss are "clean" (their labels are trusted), the
others "suspected noisy" (their segmentation loss fades and a consistency loss takes over).
"""

from __future__ import annotations

import math

import torch


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
