"""Human reviews of routed labels: their outcome, the verifier's training examples, ROC.

A review is a human ``final`` saved for an image the verifier routed: per structure, the
Dice between the machine label that was judged and the final says whether it was wrong
(``Dice < wrong_dice``); each verifier's probability for it when it was judged is kept
beside, so the verifiers can be compared on what humans found. The records are the ground truth the verifier is recalibrated on
and the ROC operating point is chosen from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emlabel.metrics import dice
from emlabel.verify import Review, StructureFeatures, choose_threshold, roc_curve
from emlabel.verify.routing import Routing

MIN_RANDOM_PER_CLASS = 3
"""Wrong and right random reviews each before the operating point is fitted on them alone."""


def review_record(
    *,
    image_id: str,
    machine: np.ndarray,
    final: np.ndarray,
    judged: Mapping[str, Any],
    label_map: Mapping[str, int],
    wrong_dice: float,
    time: str,
    routing: str = Routing.VERIFIER,
) -> dict[str, Any]:
    """The outcome of one review; ``judged`` is the verifier info of the judged label,
    ``routing`` how the label was chosen for review (:class:`emlabel.verify.routing.Routing`).

    Overall Dice = mean over the structures present in either label (1 if none).
    """
    structures, dices = [], []
    for name, value in label_map.items():
        if name not in judged["features"]:
            continue
        a, b = machine == value, final == value
        d = dice(a, b)
        if a.any() or b.any():
            dices.append(d)
        scores = {
            verifier: by[name] for verifier, by in judged.get("scores", {}).items() if name in by
        }
        structures.append(
            {
                "structure": name,
                "features": judged["features"][name],
                "scores": scores,
                "dice": round(d, 6),
                "was_wrong": bool(d < wrong_dice),
            }
        )
    overall = float(np.mean(dices)) if dices else 1.0
    return {
        "image_id": image_id,
        "time": time,
        "iteration": judged.get("iteration"),
        "judged_tag": judged.get("label_tag"),
        "image_score": judged.get("score"),
        "dice": round(overall, 6),
        "image_wrong": bool(overall < wrong_dice),
        "routing": routing,
        "structures": structures,
    }


def structure_reviews(records: Sequence[Mapping[str, Any]]) -> list[Review]:
    """Per-structure verifier training examples from stored review records."""
    return [
        Review(features=StructureFeatures.from_dict(s["features"]), was_wrong=bool(s["was_wrong"]))
        for record in records
        for s in record.get("structures", [])
    ]


def scored_reviews(records: Sequence[Mapping[str, Any]]) -> list[tuple[dict[str, float], bool]]:
    """Per reviewed structure: every verifier's probability when it was judged, and the truth
    (what :func:`emlabel.verify.learned.selection.choose_verifier` compares them on)."""
    return [
        (dict(s.get("scores", {})), bool(s["was_wrong"]))
        for record in records
        for s in record.get("structures", [])
    ]


def random_reviews(records: Sequence[Mapping[str, Any]]) -> list[tuple[float, bool]]:
    """``(image score when judged, was wrong)`` of the reviews drawn at random
    (:mod:`emlabel.verify.routing`): the unbiased sample of the unreviewed labels."""
    return [
        (float(r["image_score"]), bool(r["image_wrong"]))
        for r in records
        if r.get("routing") == Routing.RANDOM and r.get("image_score") is not None
    ]


def operating_point(records: Sequence[Mapping[str, Any]], target: float) -> dict[str, Any] | None:
    """ROC of the verifier's image scores against the review outcomes, and its threshold.

    Fitted on the random reviews alone once they hold ``MIN_RANDOM_PER_CLASS`` wrong and as
    many right labels (an unbiased sample); until then on all reviews, most of which the
    verifier picked itself (``sample`` says which, ``meaningful`` whether the point can be
    trusted). None until the reviews hold both a wrong and a right label.
    """
    random_pairs = random_reviews(records)
    unbiased = all(
        sum(w == bad for _, w in random_pairs) >= MIN_RANDOM_PER_CLASS for bad in (True, False)
    )
    pairs = random_pairs if unbiased else [
        (r["image_score"], r["image_wrong"]) for r in records if r.get("image_score") is not None
    ]  # fmt: skip
    if not pairs or len({w for _, w in pairs}) < 2:
        return None
    scores, bad = zip(*pairs, strict=True)
    point = choose_threshold(list(scores), list(bad), target_sensitivity=target)
    sample = "random reviews" if unbiased else "all reviews (mostly the verifier's own picks)"
    note = (
        f"fitted on {len(pairs)} {sample}"
        if unbiased
        else f"not meaningful yet: fitted on {len(pairs)} {sample}; an unbiased point needs "
        f"{MIN_RANDOM_PER_CLASS} wrong and {MIN_RANDOM_PER_CLASS} right random reviews"
    )
    return {
        "curve": roc_curve(list(scores), list(bad)),
        "point": point,
        "sample": "random" if unbiased else "all",
        "meaningful": unbiased,
        "note": note,
    }
