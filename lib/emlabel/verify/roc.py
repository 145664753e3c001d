"""ROC analysis of the verifier and the operating point that reaches a target sensitivity.

Every human review (and, in benchmarks, the known truth) says whether a label was bad. With
the verifier's scores for those labels, :func:`roc_curve` gives the ROC curve and its AUC and
:func:`choose_threshold` the threshold at which to route labels to humans.

**Threshold rule.** A label is flagged when ``score >= threshold``. Among the distinct score
values, the chosen threshold is the *largest* one whose sensitivity (bad labels flagged / bad
labels) is at least ``target_sensitivity``: the fewest reviews that still catch the target
share of bad labels. Then

- sensitivity  = flagged bad / all bad,
- specificity  = unflagged good / all good (the share of good labels spared a review),
- review_fraction = flagged / all labels.

Edge cases:

- **ties**: equal scores are flagged together (a threshold cannot split them), so the
  sensitivity may exceed the target and the tied good labels are reviewed too;
- **no bad label**: nothing needs catching; the threshold is ``inf`` (flag nothing),
  sensitivity is NaN (undefined), specificity 1.0, review fraction 0;
- **no good label**: specificity is NaN; the threshold follows the rule above;
- no scores, NaN scores, or a target outside (0, 1]: ValueError.

In JSON (``to_dict``) NaN and infinite values are written as ``null``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emlabel.atomic import atomic_path


@dataclasses.dataclass(frozen=True, kw_only=True)
class RocCurve:
    """False/true positive rates per threshold (scikit-learn's), the AUC and the counts."""

    fpr: list[float]
    tpr: list[float]
    thresholds: list[float]
    auc: float
    """NaN when only one class is present."""
    n_bad: int
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "fpr": [_json_number(v) for v in self.fpr],
            "tpr": [_json_number(v) for v in self.tpr],
            "thresholds": [_json_number(v) for v in self.thresholds],
            "auc": _json_number(self.auc),
            "n_bad": self.n_bad,
            "n": self.n,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperatingPoint:
    """The chosen threshold and what it implies (see the module docstring)."""

    threshold: float
    sensitivity: float
    specificity: float
    review_fraction: float
    n_bad: int
    n: int
    n_flagged: int
    target_sensitivity: float

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in dataclasses.asdict(self).items()}


def _json_number(value: float | int) -> float | int | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _check(scores: Sequence[float], is_bad: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(is_bad).astype(bool).ravel()
    if s.size == 0:
        raise ValueError("no scores")
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} is_bad values")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s, y


def roc_curve(scores: Sequence[float], is_bad: Sequence[bool]) -> RocCurve:
    """ROC curve (scikit-learn, bad = positive class, higher score = more doubtful) and AUC.

    With only one class present the curve is undefined: it is returned with its two end points
    (flag nothing, flag all), NaN for the missing class's rate and AUC NaN, without
    scikit-learn's warning. ``thresholds[0]`` is ``inf`` (flag nothing), as in scikit-learn.
    """
    from sklearn import metrics

    s, y = _check(scores, is_bad)
    n_bad = int(y.sum())
    if n_bad in (0, s.size):
        # Two points: flag nothing (threshold inf) and flag everything (the lowest score).
        # The rate of the missing class is undefined (NaN).
        rates = [0.0, 1.0]
        undefined = [math.nan, math.nan]
        return RocCurve(
            fpr=rates if n_bad == 0 else undefined,
            tpr=undefined if n_bad == 0 else rates,
            thresholds=[math.inf, float(s.min())],
            auc=math.nan,
            n_bad=n_bad,
            n=int(s.size),
        )
    fpr, tpr, thresholds = metrics.roc_curve(y, s, drop_intermediate=False)
    return RocCurve(
        fpr=[float(v) for v in fpr],
        tpr=[float(v) for v in tpr],
        thresholds=[float(v) for v in thresholds],
        auc=float(metrics.roc_auc_score(y, s)),
        n_bad=n_bad,
        n=int(s.size),
    )


def choose_threshold(
    scores: Sequence[float], is_bad: Sequence[bool], *, target_sensitivity: float = 0.95
) -> OperatingPoint:
    """The largest threshold with sensitivity >= target (flag ``score >= threshold``).

    See the module docstring for the rule and its edge cases.
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    s, y = _check(scores, is_bad)
    n, n_bad = int(s.size), int(y.sum())
    n_good = n - n_bad
    if n_bad == 0:
        return OperatingPoint(
            threshold=math.inf,
            sensitivity=math.nan,
            specificity=1.0,
            review_fraction=0.0,
            n_bad=0,
            n=n,
            n_flagged=0,
            target_sensitivity=target_sensitivity,
        )
    for threshold in np.unique(s)[::-1]:  # distinct values, largest first
        flagged = s >= threshold
        sensitivity = int(np.count_nonzero(flagged & y)) / n_bad
        # tiny tolerance: 0.95 * 20 bad labels must accept 19/20 despite rounding
        if sensitivity >= target_sensitivity - 1e-12:
            break
    n_flagged = int(np.count_nonzero(flagged))
    false_pos = int(np.count_nonzero(flagged & ~y))
    return OperatingPoint(
        threshold=float(threshold),
        sensitivity=sensitivity,
        specificity=(n_good - false_pos) / n_good if n_good else math.nan,
        review_fraction=n_flagged / n,
        n_bad=n_bad,
        n=n,
        n_flagged=n_flagged,
        target_sensitivity=target_sensitivity,
    )


def save_roc(
    curve: RocCurve,
    point: OperatingPoint | None,
    json_path: str | Path,
    png_path: str | Path,
    *,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write the curve and operating point as JSON (with ``extra`` keys, e.g. which reviews it
    was fitted on) and a PNG plot marking the point.

    Uses matplotlib's Agg canvas directly (no global backend switch); both files are written
    atomically (parent folders created).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = {"curve": curve.to_dict(), "operating_point": None if point is None else point.to_dict()}
    data |= dict(extra or {})
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")

    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    if math.isfinite(curve.auc):
        ax.plot(
            curve.fpr, curve.tpr, color="C0", linewidth=2, label=f"verifier (AUC {curve.auc:.3f})"
        )
    if point is not None and math.isfinite(point.sensitivity) and math.isfinite(point.specificity):
        ax.plot(
            [1.0 - point.specificity],
            [point.sensitivity],
            marker="o",
            color="C3",
            linestyle="none",
            label=(
                f"threshold {point.threshold:.3g}: sens {point.sensitivity:.2f}, "
                f"spec {point.specificity:.2f}, review {point.review_fraction:.0%}"
            ),
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("1 - specificity (good labels sent to review)")
    ax.set_ylabel("sensitivity (bad labels caught)")
    ax.set_title(f"Label verifier ROC (n={curve.n}, bad={curve.n_bad})")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
