"""One-vs-rest-vs-other targets of the specialist heads."""

from __future__ import annotations

import torch

BACKGROUND = 0
"""Specialist class: background."""
OWN = 1
"""Specialist class: the head's own target class."""
OTHER = 2
"""Specialist class: any other target class."""


def one_vs_rest(label: torch.Tensor, target: int) -> torch.Tensor:
    """Specialist map for class ``target`` (1-based): 0 background, 1 ``target``, 2 other."""
    out = torch.full_like(label, OTHER, dtype=torch.long)
    out[label == BACKGROUND] = BACKGROUND
    out[label == target] = OWN
    return out


def specialist_targets(label: torch.Tensor, num_targets: int) -> list[torch.Tensor]:
    """The K = ``num_targets`` specialist maps of a class map ``label`` (values 0..K).

    Map k-1 (for class k) holds 0 where ``label`` is background, 1 where it is k and 2
    where it is another target class. Values outside 0..K raise ``ValueError``.
    """
    if num_targets < 1:
        raise ValueError(f"num_targets must be >= 1, got {num_targets}")
    if label.numel() and (int(label.min()) < 0 or int(label.max()) > num_targets):
        raise ValueError(
            f"label values must lie in 0..{num_targets}, got {int(label.min())}..{int(label.max())}"
        )
    return [one_vs_rest(label, k) for k in range(1, num_targets + 1)]
