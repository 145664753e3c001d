"""Learner ``aide``: two cross-correcting UNets; each network's prediction is a member."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from emlabel.errors import InvalidRequestError
from emlabel.learners.segmentation import argmax_labels, window_inferer
from emlabel.methods.aide import AIDEOptions, AIDETrainer
from emlabel.methods.em.items import EMItem
from emlabel.methods.em.learner import FitSpec, Learner
from emlabel.nets.app import segmentation_unet
from emlabel.nets.ensemble import PairedSoftmaxEnsemble
from emlabel.settings import AppSettings
from emlabel.training.loading import LoadedSet, load_items


def default_aide_options(settings: AppSettings) -> AIDEOptions:
    """The app's AIDE defaults: training-time augmentation on (without it the consistency
    term collapsed the networks in ``bench/aide.py``; bench/README.md)."""
    return AIDEOptions(
        max_epochs=settings.max_epochs, seed=settings.seed, batch_size=2, train_augment=True
    )


class AIDELearner(Learner):
    """AIDE on whole volumes; human labels are the clean (never corrected) items."""

    name = "aide"
    model_file = "aide.pt"

    def __init__(self, *, settings: AppSettings, options: AIDEOptions | None = None) -> None:
        self.settings = settings
        self.options = options or default_aide_options(settings)
        self.multiple_of = 2 ** (len(settings.network_channels) - 1)
        self.ensemble = PairedSoftmaxEnsemble(
            segmentation_unet(settings), segmentation_unet(settings)
        )
        self.trainer: AIDETrainer | None = None
        self._trained = False

    def fit(self, items: Sequence[EMItem], spec: FitSpec) -> dict[str, Any]:
        labeled = [item for item in items if item.label]
        if len(labeled) < self.options.batch_size:
            raise InvalidRequestError(
                f"aide needs at least batch_size={self.options.batch_size} labeled images, "
                f"has {len(labeled)}"
            )
        data = load_items(
            [item.as_dict() for item in labeled],
            settings=self.settings,
            multiple_of=self.multiple_of,
        )
        options = dataclasses.replace(self.options, max_epochs=spec.epochs, seed=spec.seed)
        self.trainer = AIDETrainer(
            lambda: segmentation_unet(self.settings),
            data.images,
            data.labels,
            hq_mask=torch.tensor([item.human for item in labeled]),
            options=options,
        )
        self.trainer.fit(on_epoch=spec.on_epoch)
        self.ensemble = PairedSoftmaxEnsemble(self.trainer.f1, self.trainer.f2).eval()
        self._trained = True
        return {
            "epochs": spec.epochs,
            "train_images": len(labeled),
            "aide_corrections": len(self.trainer.updates),
        }

    def members(self, data: LoadedSet) -> list[list[np.ndarray]]:
        inferer = window_inferer(self.settings)
        out = []
        with torch.no_grad():
            for i in range(data.images.shape[0]):
                image = data.images[i : i + 1]
                out.append(
                    [inferer(image, net).argmax(dim=1)[0].numpy().astype(np.uint8)
                     for net in self.ensemble.nets]
                )  # fmt: skip
        return out

    def predict(self, data: LoadedSet) -> list[np.ndarray]:
        """The mean softmax of both networks (what infer ``aide`` serves)."""
        inferer, c = window_inferer(self.settings), self.settings.num_classes
        return argmax_labels(self.ensemble, data, inferer, channels=c)

    @property
    def served(self) -> torch.nn.Module:
        return self.ensemble
