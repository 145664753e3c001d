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


def default_aide_options(settings: AppSettings, *, epochs: int | None = None) -> AIDEOptions:
    """The app's AIDE defaults for a training of ``epochs`` (default the app's ``max_epochs``).

    - training-time augmentation on: without it the consistency term collapsed the networks
      in ``bench/aide.py`` (Shenzhen: 0.445 test Dice without, 0.909 with; bench/README.md);
    - the app's learning rate, as the ``segmentation`` trainer's (the spec's 1e-4 is for its
      100 epochs of a large set; with the app's few epochs the 3D networks stayed near
      background: 0.07 test Dice in ``bench/campaign.py``);
    - the spec's epoch schedules scaled to the epochs (:meth:`AIDEOptions.scaled_schedule`);
    - the cheaper consistency targets: the training pass reused as one of the K copies, and
      the no-gradient passes in bfloat16 where the hardware has it (``bench/aide_cost.py``).
    """
    options = AIDEOptions(
        seed=settings.seed,
        batch_size=2,
        train_augment=True,
        learning_rate=settings.learning_rate,
        identity_copy=True,
        no_grad_precision="auto",
    )
    return options.scaled_schedule(epochs or settings.max_epochs)


class AIDELearner(Learner):
    """AIDE on whole volumes; human labels are the clean (never corrected) items."""

    name = "aide"
    model_file = "aide.pt"

    def __init__(self, *, settings: AppSettings, options: AIDEOptions | None = None) -> None:
        self.settings = settings
        self.options = options
        """Fixed options, or None: :func:`default_aide_options` for each fit's epochs."""
        self.multiple_of = 2 ** (len(settings.network_channels) - 1)
        self.ensemble = PairedSoftmaxEnsemble(
            segmentation_unet(settings), segmentation_unet(settings)
        )
        self.trainer: AIDETrainer | None = None
        self._trained = False

    def fit(self, items: Sequence[EMItem], spec: FitSpec) -> dict[str, Any]:
        labeled = [item for item in items if item.label]
        if self.options is None:
            options = default_aide_options(self.settings, epochs=spec.epochs)
        else:
            options = dataclasses.replace(self.options, max_epochs=spec.epochs)
        options = dataclasses.replace(options, seed=spec.seed)
        if len(labeled) < options.batch_size:
            raise InvalidRequestError(
                f"aide needs at least batch_size={options.batch_size} labeled images, "
                f"has {len(labeled)}"
            )
        data = load_items(
            [item.as_dict() for item in labeled],
            settings=self.settings,
            multiple_of=self.multiple_of,
        )
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
                    [inferer(image, net).max(dim=1).indices[0].numpy().astype(np.uint8)
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
