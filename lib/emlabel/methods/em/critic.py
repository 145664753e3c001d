"""The critic: one E-step's eyes over a learner's ensemble.

For every labeled item it computes the verifier's features (label vs the learner's
ensemble members, image, shape), fits the shape population of accepted labels (the human
ones, or all when fewer than three are human) and the verifier on the human reviews so
far, and scores every non-human label. When a learned verifier is given
(:mod:`emlabel.verify.learned`), it scores the same labels and the one chosen by
:func:`emlabel.verify.learned.selection.choose_verifier` sets the probabilities; both are kept
per image (``scores``) so that a later review can compare them. Without a learner (no
segmentation model yet) there is no ensemble: the hand-built verifier judges shape alone and
the learned one the image and label alone. An image labeled by two or more users brings its
annotators' labels too (:attr:`EMItem.annotations`): their agreement is a verifier signal,
their consensus a candidate for the expert.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emlabel.distributed import sharded_map
from emlabel.errors import InvalidRequestError
from emlabel.labels.provenance import now_iso
from emlabel.methods.em.items import EMItem
from emlabel.methods.em.learner import Learner
from emlabel.settings import AppSettings
from emlabel.training.loading import LoadedSet, load_items
from emlabel.verify import (
    ImageVerdict,
    LabelVerifier,
    Review,
    ShapePopulation,
    StructureFeatures,
    structure_features,
)
from emlabel.verify.expert import PairwiseJudge, mean_masks
from emlabel.verify.learned import LearnedVerifier
from emlabel.verify.learned.selection import (
    HAND_BUILT,
    LEARNED,
    VerifierChoice,
    choose_verifier,
    with_learned_probability,
)

MIN_HUMAN_FOR_POPULATION = 3


def grid_multiple(learner: Learner | None) -> int:
    """The size multiple the learner's network needs (the interface's default without one)."""
    return learner.multiple_of if learner is not None else Learner.multiple_of


@dataclasses.dataclass(kw_only=True)
class CriticRun:
    """Everything one pass of the critic saw and concluded."""

    data: LoadedSet
    machine_ids: list[str]
    """Items whose label is not human: the ones the verifier judges."""
    members: dict[str, list[np.ndarray]]
    features: dict[str, dict[str, StructureFeatures]]
    verdicts: dict[str, ImageVerdict]
    population: ShapePopulation
    verifier: LabelVerifier
    tags: dict[str, str | None]
    """The label version each item's label is (a correction's parent)."""
    label_map: dict[str, int]
    choice: VerifierChoice
    """Which verifier set the probabilities, and why."""
    learned: LearnedVerifier | None = None
    scores: dict[str, dict[str, dict[str, float]]] = dataclasses.field(default_factory=dict)
    """Image -> verifier name -> structure -> P(wrong), for every verifier that scored it."""
    annotations: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    """Image -> its annotators' label maps on ``data``'s grid (images with two or more)."""
    work_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds of work per part, summed over images (and ranks): ``ensemble`` (the
    learner's inference), ``features`` (the verifier's features)."""

    def _index(self, image_id: str) -> int:
        return self.data.ids.index(image_id)

    def label(self, image_id: str) -> np.ndarray:
        return self.data.labels[self._index(image_id)].numpy().astype(np.uint8)

    def image(self, image_id: str) -> np.ndarray:
        return self.data.images[self._index(image_id), 0].numpy()

    def image_channels(self, image_id: str) -> np.ndarray:
        """The image ``(C, *spatial)`` as the networks see it."""
        return self.data.images[self._index(image_id)].numpy()

    def model_maps(self, image_id: str) -> dict[str, np.ndarray] | None:
        """The ensemble's mean mask per structure, as the learned verifier reads it: None
        without a learner, or for a learned verifier trained without one."""
        if self.learned is not None and not self.learned.with_model:
            return None
        return mean_masks(self.members[image_id], self.label_map)

    def judges(self) -> dict[str, PairwiseJudge]:
        """Per machine-labelled image, the learned pair head as the expert's judge, when the
        learned verifier is the one in use (else none: the expert uses hand-built badness)."""
        if not self.uses_learned or self.learned is None:
            return {}
        learned = self.learned

        def judge_for(image: np.ndarray) -> PairwiseJudge:
            return lambda a, b, maps: learned.prefer(
                image, a, b, model_maps=maps if learned.with_model else None
            )

        return {i: judge_for(self.image_channels(i)) for i in self.machine_ids}

    @property
    def uses_learned(self) -> bool:
        return self.learned is not None and self.choice.name == LEARNED

    def info(self, image_id: str, **extra: Any) -> dict[str, Any]:
        """What image info ``emlabel.verifier`` holds: score, reasons, features (for reviews)."""
        verdict = self.verdicts[image_id]
        return {
            "score": round(verdict.probability_wrong, 6),
            "reasons": verdict.reasons[:3],
            "worst_structure": verdict.worst_structure,
            "structures": {n: round(v.probability_wrong, 6) for n, v in verdict.structures.items()},
            "features": {name: f.to_dict() for name, f in self.features[image_id].items()},
            "label_tag": self.tags[image_id],
            "mode": self.verifier.mode,
            "calibration": self.verifier.fit_message,
            "verifier": self.choice.name,
            "verifier_choice": self.choice.reason,
            "scores": {
                name: {s: round(p, 6) for s, p in by.items()}
                for name, by in self.scores.get(image_id, {}).items()
            },
            "time": now_iso(),
        } | extra


class Critic:
    """Verifier + shape statistics over a learner's ensemble."""

    def __init__(
        self,
        *,
        settings: AppSettings,
        reviews: Sequence[Review] = (),
        learned: LearnedVerifier | None = None,
        review_scores: Sequence[tuple[Mapping[str, float], bool]] = (),
    ) -> None:
        self.settings = settings
        self.reviews = list(reviews)
        self.learned = learned
        self.review_scores = list(review_scores)

    def run(self, items: Sequence[EMItem], learner: Learner | None) -> CriticRun:
        """Judge every labeled item of ``items`` with ``learner``'s ensemble (None: no model)."""
        labeled = [item for item in items if item.label]
        if not labeled:
            raise InvalidRequestError("no labeled images to verify")
        data = load_items(
            [item.as_dict() for item in labeled],
            settings=self.settings,
            multiple_of=grid_multiple(learner),
        )
        annotations = load_annotations(
            labeled,
            data,
            settings=self.settings,
            multiple_of=grid_multiple(learner),
        )
        label_map = self.settings.label_map

        def judge(i: int) -> tuple[list[np.ndarray], dict[str, StructureFeatures], float, float]:
            """Image ``i``'s ensemble and features, and the seconds each took (under
            torchrun: on one rank)."""
            image_id = data.ids[i]
            start = time.perf_counter()
            members = learner.members(data.subset([i]))[0] if learner is not None else []
            inferred = time.perf_counter()
            features = structure_features(
                data.labels[i].numpy().astype(np.uint8),
                members,
                spacing=self.settings.target_spacing,
                labels=label_map,
                image=data.images[i, 0].numpy(),
                image_id=image_id,
                annotations=annotations.get(image_id, ()),
            )
            return members, features, inferred - start, time.perf_counter() - inferred

        judged = sharded_map(judge, range(len(data.ids)), progress="verifier images")
        members = {image_id: j[0] for image_id, j in zip(data.ids, judged, strict=True)}
        features = {image_id: j[1] for image_id, j in zip(data.ids, judged, strict=True)}
        work = {"ensemble": sum(j[2] for j in judged), "features": sum(j[3] for j in judged)}
        human = {item.id for item in labeled if item.human}
        # the shape reference: the human labels, or every label but the models' guesses
        guesses = {item.id for item in labeled if item.pseudo}
        pool = human if len(human) >= MIN_HUMAN_FOR_POPULATION else set(data.ids) - guesses
        pool = pool or set(data.ids)
        population = ShapePopulation.fit([f for i in pool for f in features[i].values()])
        verifier = LabelVerifier()
        verifier.fit(self.reviews, population)
        machine = [i for i in data.ids if i not in human]
        verdicts = {
            i: verifier.score_image(list(features[i].values()), population, image_id=i)
            for i in machine
        }
        run = CriticRun(
            data=data, machine_ids=machine, members=members, features=features,
            verdicts=verdicts, population=population, verifier=verifier,
            tags={item.id: item.tag for item in labeled}, label_map=dict(label_map),
            choice=self._choose(), learned=self.learned, annotations=annotations,
            work_seconds=work,
        )  # fmt: skip
        self._score_learned(run)
        return run

    def _choose(self) -> VerifierChoice:
        validation = None if self.learned is None else self.learned.validation
        scored = validation is not None and all(
            f"{k}_scores" in validation for k in (HAND_BUILT, LEARNED)
        )
        return choose_verifier(
            reviews=self.review_scores,
            validation={k: validation[f"{k}_scores"] for k in (HAND_BUILT, LEARNED)}
            if scored
            else None,
            validation_wrong=validation.get("wrong", []) if scored else [],
            learned_available=self.learned is not None,
        )

    def _score_learned(self, run: CriticRun) -> None:
        """Both verifiers' probabilities per image; the chosen one's in the verdicts."""
        learned_scores: dict[str, dict[str, float]] = {}
        if run.learned is not None:
            learned_verifier = run.learned
            scored = sharded_map(
                lambda i: learned_verifier.score(
                    run.image_channels(i), run.label(i), model_maps=run.model_maps(i)
                ),
                run.machine_ids,
            )
            learned_scores = dict(zip(run.machine_ids, scored, strict=True))
        for image_id in run.machine_ids:
            verdict = run.verdicts[image_id]
            run.scores[image_id] = {
                HAND_BUILT: {s: v.probability_wrong for s, v in verdict.structures.items()}
            }
            if run.learned is None:
                continue
            learned = learned_scores[image_id]
            run.scores[image_id][LEARNED] = learned
            if run.uses_learned:
                structures = [
                    with_learned_probability(v, learned[s]) for s, v in verdict.structures.items()
                ]
                run.verdicts[image_id] = ImageVerdict.from_structures(structures, image_id=image_id)


def load_annotations(
    items: Sequence[EMItem], data: LoadedSet, *, settings: AppSettings, multiple_of: int
) -> dict[str, list[np.ndarray]]:
    """Each item's annotators' label maps on ``data``'s grid (``data = load_items(items)``).

    The items are loaded again (:func:`load_items`: same transforms, same padding), once per
    annotation with it as the label: only the annotated ones when their common padded shape
    is ``data``'s (same shape, same padding), else all of them, the others without a label.
    """
    rows = [item.as_dict() | {"label": a} for item in items for a in item.annotations]
    if not rows:
        return {}
    loaded = load_items(rows, settings=settings, multiple_of=multiple_of)
    if loaded.labels.shape[1:] != data.labels.shape[1:]:
        rows += [{"id": item.id, "image": item.image} for item in items if not item.annotations]
        loaded = load_items(rows, settings=settings, multiple_of=multiple_of)
    found: dict[str, list[np.ndarray]] = {}
    for image_id, label, has_label in zip(loaded.ids, loaded.labels, loaded.has_label, strict=True):
        if has_label:
            found.setdefault(image_id, []).append(label.numpy().astype(np.uint8))
    return found
