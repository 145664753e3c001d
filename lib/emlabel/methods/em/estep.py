"""The E-step: for each machine label, accept it, correct it, or route it to a human.

Plain arrays in, decisions out; the server's ``em`` trainer and ``bench/em_loop.py`` call
this same function. A label the verifier finds likely wrong (``p >= correct_threshold``)
is put to the pairwise Label Expert against the learner's candidates
(:func:`model_candidates`) and, for an image three or more annotators labeled, their
consensus (:func:`emlabel.labels.consensus.consensus_label`, STAPLE; with two, a vote keeps
only their agreement, a candidate that always under-segments, so none is offered); the
expert's choice decides between correcting (to the chosen candidate) and routing (see
:func:`emlabel.methods.em.decide.decide`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from emlabel.distributed import sharded_map
from emlabel.labels.consensus import MIN_STAPLE_ANNOTATORS, consensus_label
from emlabel.methods.em.decide import Action, Decision, decide
from emlabel.verify import ImageVerdict, LabelExpert, LabelVerifier, ShapePopulation
from emlabel.verify.expert import PairwiseJudge


def majority(members: Sequence[np.ndarray]) -> np.ndarray:
    """Voxel-wise majority vote of label maps (ties: the smaller label value)."""
    stack = np.stack(members).astype(np.int64)
    counts = np.stack([(stack == v).sum(axis=0) for v in range(int(stack.max()) + 1)])
    return counts.argmax(axis=0).astype(np.uint8)


def model_candidates(members: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The learner's candidate labels for the expert: the voxel-wise majority of three or
    more members (a flip ensemble); each member on its own when there are two (AIDE's two
    networks, CGS's generalist and specialists), where a majority would only keep their
    agreement."""
    if len(members) >= 3:
        return {"model": majority(members)}
    return {f"model_{k + 1}": np.asarray(m).astype(np.uint8) for k, m in enumerate(members)}


@dataclasses.dataclass(frozen=True)
class EStepResult:
    """The decisions, in input order, and the corrected label of every ``correct``."""

    decisions: list[Decision]
    corrections: dict[str, np.ndarray]


def e_step(
    *,
    labels: Mapping[str, np.ndarray],
    members: Mapping[str, Sequence[np.ndarray]],
    verdicts: Mapping[str, ImageVerdict],
    verifier: LabelVerifier,
    population: ShapePopulation,
    label_map: Mapping[str, int],
    spacing: Sequence[float],
    correct_threshold: float,
    review_threshold: float,
    images: Mapping[str, np.ndarray] | None = None,
    containment: Mapping[str | int, str | int] | None = None,
    annotations: Mapping[str, Sequence[np.ndarray]] | None = None,
    judges: Mapping[str, PairwiseJudge] | None = None,
) -> EStepResult:
    """Decide every image of ``verdicts`` (its label in ``labels``, its ensemble in ``members``,
    its annotators' label maps, if any, in ``annotations``); ``judges``: per image, the
    learned pairwise judge the expert uses instead of the hand-built badness (when chosen)."""
    expert = LabelExpert(verifier=verifier, labels=label_map, containment=containment)

    def decide_one(image_id: str) -> tuple[Decision, np.ndarray | None]:
        verdict = verdicts[image_id]
        choice = None
        candidates: dict[str, np.ndarray] = {}
        if verdict.probability_wrong >= correct_threshold:
            candidates = {"current": np.asarray(labels[image_id]).astype(np.uint8)}
            annotated = (annotations or {}).get(image_id, ())
            if len(annotated) >= MIN_STAPLE_ANNOTATORS:
                candidates["consensus"] = consensus_label(annotated, label_map).label
            candidates |= model_candidates(members[image_id])
            choice = expert.choose(
                candidates,
                predictions=members[image_id],
                image=None if images is None else images.get(image_id),
                population=population,
                spacing=spacing,
                judge=(judges or {}).get(image_id),
            )
        decision = decide(
            verdict,
            choice,
            correct_threshold=correct_threshold,
            review_threshold=review_threshold,
        )
        corrected = (
            candidates[choice.best]
            if decision.action == Action.CORRECT and choice is not None
            else None
        )
        return decision, corrected

    # under torchrun each rank puts its share of the images to the expert
    decided = sharded_map(decide_one, list(verdicts), progress="expert choices")
    return EStepResult(
        decisions=[d for d, _ in decided],
        corrections={d.image_id: c for d, c in decided if c is not None},
    )
