"""How many machine labels are probably still wrong, and how many reviews would catch them.

Only reviews drawn **at random** among the unreviewed labels are an unbiased sample of
them (the verifier's own picks are its most doubtful labels), so the estimate is fitted
on those alone:

1. ``r`` = wrong / random reviews, with a Wilson interval ``[r_lo, r_hi]`` (scipy's
   ``binomtest``);
2. calibration in the large: the verifier's score ``s`` becomes
   ``p(s) = sigmoid(logit(s) + c)``, with the one offset ``c`` for which the random
   reviews' mean ``p`` equals ``r`` (likewise ``c_lo``, ``c_hi`` for the bounds). The
   ranking stays the verifier's; only its level is taken from the unbiased sample;
3. probably wrong = ``sum p(s_i)`` over the unreviewed labels (interval: the same sum
   with ``c_lo`` and ``c_hi``);
4. reviews needed = the fewest unreviewed labels, most doubtful first, whose ``p`` adds up
   to ``target_sensitivity`` of the probably wrong ones.

Below ``min_random_reviews`` random reviews the figures mean nothing; the estimate then
says so (``meaningful`` false, with the reason) instead of printing numbers. A random
review's score is the one it had when judged (an earlier calibration of the verifier, maybe
an earlier model): the offset absorbs a shift of level between then and now, not a change
of ranking.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, logit
from scipy.stats import binomtest

MIN_RANDOM_REVIEWS = 5
"""Random reviews before the estimate is reported (our choice: a Wilson interval from fewer
spans most of [0, 1])."""

_EPS = 1e-6
_OFFSET_RANGE = 40.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RemainingErrors:
    """The estimate (see the module docstring); numbers are None when not ``meaningful``."""

    meaningful: bool
    reason: str
    n_unreviewed: int
    n_random_reviews: int
    n_random_wrong: int
    target_sensitivity: float
    wrong_rate: float | None = None
    wrong_rate_interval: tuple[float, float] | None = None
    probably_wrong: float | None = None
    probably_wrong_interval: tuple[float, float] | None = None
    reviews_needed: int | None = None
    """More reviews, most doubtful first, expected to catch ``target_sensitivity`` of them."""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("wrong_rate_interval", "probably_wrong_interval"):
            if data[key] is not None:
                data[key] = [round(v, 4) for v in data[key]]
        for key in ("wrong_rate", "probably_wrong"):
            if data[key] is not None:
                data[key] = round(data[key], 4)
        return data


def _offset(scores: np.ndarray, rate: float) -> float:
    """The ``c`` with ``mean(sigmoid(logit(scores) + c)) == rate`` (``rate`` in (0, 1))."""
    logits = logit(np.clip(scores, _EPS, 1 - _EPS))
    return float(
        brentq(lambda c: float(expit(logits + c).mean()) - rate, -_OFFSET_RANGE, _OFFSET_RANGE)
    )


def _calibrated(scores: np.ndarray, reviewed: np.ndarray, rate: float) -> np.ndarray:
    """``p(s)`` of ``scores`` with the offset fitted so the reviewed scores average ``rate``."""
    if rate <= 0:
        return np.zeros_like(scores)
    if rate >= 1:
        return np.ones_like(scores)
    c = _offset(reviewed, rate)
    return expit(logit(np.clip(scores, _EPS, 1 - _EPS)) + c)


def reviews_to_catch(probabilities: np.ndarray, target: float) -> int:
    """Fewest labels, highest ``probabilities`` first, whose sum reaches ``target`` of the total."""
    total = float(probabilities.sum())
    if total <= 0:
        return 0
    cumulative = np.cumsum(np.sort(probabilities)[::-1])
    return int(np.searchsorted(cumulative, target * total - 1e-9) + 1)


def estimate_remaining_errors(
    unreviewed_scores: Sequence[float],
    random_reviews: Sequence[tuple[float, bool]],
    *,
    target_sensitivity: float,
    min_random_reviews: int = MIN_RANDOM_REVIEWS,
    confidence: float = 0.95,
) -> RemainingErrors:
    """The estimate from the verifier's scores of the unreviewed labels and the random
    reviews' ``(score when judged, was wrong)``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if min_random_reviews < 1:
        raise ValueError(f"min_random_reviews must be >= 1, got {min_random_reviews}")
    scores = np.asarray(unreviewed_scores, dtype=float)
    n_random = len(random_reviews)
    n_wrong = sum(bool(w) for _, w in random_reviews)
    base = {
        "n_unreviewed": int(scores.size),
        "n_random_reviews": n_random,
        "n_random_wrong": n_wrong,
        "target_sensitivity": target_sensitivity,
    }
    if n_random < min_random_reviews:
        return RemainingErrors(
            meaningful=False,
            reason=(
                f"not meaningful yet: {n_random} random review(s), the estimate needs "
                f"{min_random_reviews} (a share of each iteration's review budget is drawn "
                "at random, setting review_random_share)"
            ),
            **base,
        )
    reviewed = np.asarray([s for s, _ in random_reviews], dtype=float)
    if not np.isfinite(reviewed).all() or not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    rate = n_wrong / n_random
    ci = binomtest(n_wrong, n_random).proportion_ci(confidence_level=confidence, method="wilson")
    low, high = float(ci.low), float(ci.high)
    p = _calibrated(scores, reviewed, rate)
    sums = [float(_calibrated(scores, reviewed, r).sum()) for r in (low, high)]
    percent = f"{confidence:.0%}"
    return RemainingErrors(
        meaningful=True,
        reason=(
            f"{n_wrong} of {n_random} random reviews were wrong; the verifier's scores of the "
            f"{scores.size} unreviewed labels calibrated to that rate ({percent} interval)"
        ),
        wrong_rate=rate,
        wrong_rate_interval=(low, high),
        probably_wrong=float(p.sum()),
        probably_wrong_interval=(min(sums), max(sums)),
        reviews_needed=reviews_to_catch(p, target_sensitivity) if scores.size else 0,
        **base,
    )
