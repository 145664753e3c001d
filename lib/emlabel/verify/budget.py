"""Human review budget: send the most doubtful unresolved images, at most a fixed share.

Per EM iteration at most ``review_budget(budget_fraction, n_labeled)`` images go to a human:

    budget = ceil(budget_fraction * n_labeled)     (default fraction 0.05)

rounded *up*, so any positive fraction of a non-empty dataset allows at least one review
(5% of 10 images = 1 review, of 30 = 2, of 100 = 5). The product is rounded to 9 decimals
before the ceiling so that float noise (``0.07 * 100 = 7.000000000000001``) does not add a
review. Reviews already spent this iteration (``used``) count against the budget.

:func:`select_for_review` ranks the images that are not yet reviewed by verifier score, most
doubtful first (equal scores: by image id, for a stable order), optionally keeps only scores
``>= min_score`` (e.g. the ROC operating point's threshold), and returns at most the remaining
budget. :func:`budget_report` says how much of the budget a selection uses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Hashable, Mapping
from typing import Any

DEFAULT_BUDGET_FRACTION = 0.05


def review_budget(budget_fraction: float, n_labeled: int) -> int:
    """Reviews allowed per iteration: ``ceil(budget_fraction * n_labeled)`` (module docstring)."""
    if not 0.0 <= budget_fraction <= 1.0:
        raise ValueError(f"budget_fraction must be in [0, 1], got {budget_fraction}")
    if n_labeled < 0:
        raise ValueError(f"n_labeled must be >= 0, got {n_labeled}")
    return math.ceil(round(budget_fraction * n_labeled, 9))


@dataclasses.dataclass(frozen=True, kw_only=True)
class BudgetReport:
    """How much of one iteration's review budget is spent."""

    budget: int
    used: int
    remaining: int
    budget_fraction: float
    n_labeled: int

    @property
    def fraction_used(self) -> float:
        """Share of the budget spent (0.0 for a zero budget)."""
        return self.used / self.budget if self.budget else 0.0

    @property
    def review_fraction(self) -> float:
        """Share of the labeled images sent to review."""
        return self.used / self.n_labeled if self.n_labeled else 0.0

    def __str__(self) -> str:
        return (
            f"{self.used} of {self.budget} reviews used ({self.review_fraction:.1%} of "
            f"{self.n_labeled} labeled images; budget {self.budget_fraction:.1%})"
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["fraction_used"] = self.fraction_used
        data["review_fraction"] = self.review_fraction
        return data


def budget_report(
    used: int,
    *,
    budget_fraction: float = DEFAULT_BUDGET_FRACTION,
    n_labeled: int,
) -> BudgetReport:
    """Budget, reviews used and remaining for one iteration."""
    if used < 0:
        raise ValueError(f"used must be >= 0, got {used}")
    budget = review_budget(budget_fraction, n_labeled)
    return BudgetReport(
        budget=budget,
        used=used,
        remaining=max(0, budget - used),
        budget_fraction=budget_fraction,
        n_labeled=n_labeled,
    )


def select_for_review(
    scores: Mapping[Hashable, float],
    *,
    already_reviewed: Collection[Hashable] = frozenset(),
    budget_fraction: float = DEFAULT_BUDGET_FRACTION,
    n_labeled: int | None = None,
    used: int = 0,
    min_score: float | None = None,
) -> list[Hashable]:
    """Image ids to send to a human, most doubtful first, within the remaining budget.

    ``scores``: image id -> verifier score (higher = more doubtful); ``n_labeled`` defaults to
    ``len(scores)``; ``used``: reviews already sent this iteration. NaN scores: ValueError.
    """
    if any(math.isnan(s) for s in scores.values()):
        raise ValueError("scores must not be NaN")
    report = budget_report(
        used,
        budget_fraction=budget_fraction,
        n_labeled=len(scores) if n_labeled is None else n_labeled,
    )
    reviewed = set(already_reviewed)
    open_ids = [
        i for i, s in scores.items() if i not in reviewed and (min_score is None or s >= min_score)
    ]
    open_ids.sort(key=lambda i: (-scores[i], str(i)))
    return open_ids[: report.remaining]
