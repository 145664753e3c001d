"""The critic: one E-step's eyes over a learner's ensemble.

For every labeled item it computes the verifier's features (label vs the learner's
ensemble members, image, shape), fits the shape population of accepted labels (the human
ones, or all when fewer than three are human) and the verifier on the human reviews so
far, and scores every non-human label.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

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

MIN_HUMAN_FOR_POPULATION = 3


@dataclasses.dataclass
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

    def label(self, image_id: str) -> np.ndarray:
        return self.data.labels[self.data.ids.index(image_id)].numpy().astype(np.uint8)

    def image(self, image_id: str) -> np.ndarray:
        return self.data.images[self.data.ids.index(image_id), 0].numpy()

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
            "time": now_iso(),
        } | extra


class Critic:
    """Verifier + shape statistics over a learner's ensemble."""

    def __init__(self, *, settings: AppSettings, reviews: Sequence[Review] = ()) -> None:
        self.settings = settings
        self.reviews = list(reviews)

    def run(self, items: Sequence[EMItem], learner: Learner) -> CriticRun:
        """Judge every labeled item of ``items`` with ``learner``'s ensemble."""
        labeled = [item for item in items if item.label]
        if not labeled:
            raise InvalidRequestError("no labeled images to verify")
        data = load_items(
            [item.as_dict() for item in labeled],
            settings=self.settings,
            multiple_of=learner.multiple_of,
        )
        members = dict(zip(data.ids, learner.members(data), strict=True))
        label_map = self.settings.label_map
        features = {
            image_id: structure_features(
                data.labels[i].numpy().astype(np.uint8),
                members[image_id],
                spacing=self.settings.target_spacing,
                labels=label_map,
                image=data.images[i, 0].numpy(),
                image_id=image_id,
            )
            for i, image_id in enumerate(data.ids)
        }
        human = {item.id for item in labeled if item.human}
        pool = human if len(human) >= MIN_HUMAN_FOR_POPULATION else set(data.ids)
        population = ShapePopulation.fit([f for i in pool for f in features[i].values()])
        verifier = LabelVerifier()
        verifier.fit(self.reviews, population)
        machine = [i for i in data.ids if i not in human]
        verdicts = {
            i: verifier.score_image(list(features[i].values()), population, image_id=i)
            for i in machine
        }
        tags = {item.id: item.tag for item in labeled}
        return CriticRun(data, machine, members, features, verdicts, population, verifier, tags)
