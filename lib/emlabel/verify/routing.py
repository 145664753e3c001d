"""Which label a human reviews next: the verifier's most doubtful one, or a random draw.

Reviews the verifier picks itself are its most doubtful labels: a biased sample of the
labels, on which neither its calibration nor the share of labels still wrong can be
fitted. So a share of the reviews (``random_share``) is drawn uniformly among the
unreviewed labels instead. Review number ``n + 1`` (counted over the whole campaign) is
random when

    n_random + 1 <= random_share * (n + 1)

i.e. the running share of random reviews never exceeds ``random_share`` and reaches it as
soon as it can (0.2: the 5th, 10th, 15th ... review). The draw is seeded, so a campaign
replays the same way.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Hashable
from enum import StrEnum

DEFAULT_RANDOM_SHARE = 0.2


class Routing(StrEnum):
    """Why a label was sent to a human."""

    VERIFIER = "verifier"
    """The verifier's most doubtful unreviewed label."""
    RANDOM = "random"
    """A uniform draw among the unreviewed labels (the unbiased sample)."""


def next_routing(*, served: int, served_random: int, random_share: float) -> Routing:
    """How review number ``served + 1`` is chosen (module docstring)."""
    if not 0.0 <= random_share <= 1.0:
        raise ValueError(f"random_share must be in [0, 1], got {random_share}")
    if served_random + 1 <= round(random_share * (served + 1), 9):
        return Routing.RANDOM
    return Routing.VERIFIER


def random_pick(candidates: Collection[Hashable], *, seed: str) -> Hashable | None:
    """One of ``candidates``, uniformly, reproducible from ``seed`` (None when empty)."""
    if not candidates:
        return None
    return random.Random(seed).choice(sorted(candidates, key=str))
