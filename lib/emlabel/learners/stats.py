"""Learner ``stats``: masks from a known volume per structure and a few clicks (+ full labels).

Its targets (statistics and clicks of each image, on the training grid) come from a
callback, because they live outside the label files: the ``stats`` trainer reads them from
image info. Without one every image has only its label (plain DiceCE), so the EM loop does
not offer this learner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from emlabel.learners.segmentation import argmax_labels
from emlabel.methods.em.items import EMItem
from emlabel.methods.em.learner import FitSpec, Learner
from emlabel.methods.stats import ImageTargets, StatsOptions, StatsTrainer
from emlabel.nets.app import segmentation_unet
from emlabel.settings import AppSettings
from emlabel.training.loading import LoadedSet, load_items

TargetsFn = Callable[[LoadedSet, int], ImageTargets]
"""(loaded items, index) -> that image's statistics and clicks on the loaded grid."""


class StatsLearner(Learner):
    """The statistics loss of :class:`~emlabel.methods.stats.StatsTrainer` over all items."""

    name = "stats"
    model_file = "stats.pt"
    multiple_of = 8
    semi_supervised = True  # images with statistics but no label train too

    def __init__(
        self,
        *,
        settings: AppSettings,
        options: StatsOptions | None = None,
        targets: TargetsFn | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or StatsOptions(max_epochs=settings.max_epochs, seed=settings.seed)
        self.targets_of = targets or (
            lambda data, i: ImageTargets(spacing=tuple(settings.target_spacing), structures=[])
        )
        self.network = segmentation_unet(settings).eval()
        self.trainer: StatsTrainer | None = None
        self.data: LoadedSet | None = None
        self.targets: list[ImageTargets] = []
        self._trained = False

    def prepare(self, items: Sequence[EMItem], spec: FitSpec) -> StatsTrainer:
        """Load the items and build the trainer (its grown labels are known from here)."""
        self.data = load_items(
            [item.as_dict() for item in items], settings=self.settings, multiple_of=self.multiple_of
        )
        self.targets = [self.targets_of(self.data, i) for i in range(len(self.data.ids))]
        options = dataclasses.replace(self.options, max_epochs=spec.epochs, seed=spec.seed)
        self.trainer = StatsTrainer(
            lambda: segmentation_unet(self.settings),
            self.data.images,
            self.targets,
            full_labels=self.data.labels,
            full_label_mask=self.data.has_label.clone(),
            options=options,
        )
        return self.trainer

    def fit(self, items: Sequence[EMItem], spec: FitSpec) -> dict[str, Any]:
        prepared = self.trainer is not None and not self.trainer.history
        trainer = self.trainer if prepared else self.prepare(items, spec)
        trainer.fit(on_epoch=spec.on_epoch)
        self.network = trainer.network.eval()
        self._trained = True
        return {"epochs": spec.epochs, "train_images": len(items)}

    def members(self, data: LoadedSet) -> list[list[np.ndarray]]:
        return [[label] for label in argmax_labels(self.network, data)]

    @property
    def served(self) -> torch.nn.Module:
        return self.network
