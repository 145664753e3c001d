"""Learner ``segmentation``: the supervised UNet, with a flip ensemble as its evidence."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from emlabel.methods.em.items import EMItem
from emlabel.methods.em.learner import FitSpec, Learner
from emlabel.nets.app import segmentation_unet
from emlabel.settings import AppSettings
from emlabel.training.loading import LoadedSet
from emlabel.training.supervised import split_items, train_supervised

FLIP_AXES: tuple[tuple[int, ...], ...] = ((), (2,), (3,))
"""The ensemble: the image as it is and its two in-plane flips (undone on the output)."""


def window_inferer(settings: AppSettings) -> SlidingWindowInferer:
    """The sliding window every learner predicts with (the app's patch size and overlap)."""
    return SlidingWindowInferer(
        roi_size=settings.roi_size, sw_batch_size=1, overlap=settings.sw_overlap
    )


def argmax_labels(
    net: torch.nn.Module, data: LoadedSet, inferer: Any = None, channels: int | None = None
) -> list[np.ndarray]:
    """Per image of ``data``, the argmax label map of ``net`` (its first ``channels``
    outputs; through ``inferer``, a sliding window, when given)."""
    out = []
    with torch.no_grad():
        for i in range(data.images.shape[0]):
            x = data.images[i : i + 1]
            logits = inferer(x, net) if inferer is not None else net(x)
            out.append(logits[:, :channels].max(dim=1).indices[0].numpy().astype(np.uint8))
    return out


class SegmentationLearner(Learner):
    """DiceCE training on the labels (:class:`~emlabel.training.supervised.SupervisedTrainer`)."""

    name = "segmentation"
    model_file = "segmentation.pt"
    multiple_of = 8
    distributed = True

    def __init__(self, *, settings: AppSettings) -> None:
        self.settings = settings
        self.network = segmentation_unet(settings).eval()
        self._trained = False

    def fit(self, items: Sequence[EMItem], spec: FitSpec) -> dict[str, Any]:
        settings = dataclasses.replace(self.settings, seed=spec.seed)
        train, val = split_items(
            [item.as_dict() for item in items if item.label],
            val_fraction=settings.val_fraction,
            seed=settings.seed,
        )
        torch.manual_seed(spec.seed)  # the initial weights (the old loop left them to chance)
        result = train_supervised(
            segmentation_unet(settings),
            train,
            val,
            settings=settings,
            max_epochs=spec.epochs,
            on_epoch=spec.on_epoch,
        )
        self.load_state_dict(result.state_dict)
        return {
            "epochs": spec.epochs,
            "best_val_dice": result.best_val_dice,
            "train_images": len(train),
        }

    def members(self, data: LoadedSet) -> list[list[np.ndarray]]:
        inferer = window_inferer(self.settings)
        out = []
        with torch.no_grad():
            for i in range(data.images.shape[0]):
                image, members = data.images[i : i + 1], []
                for axes in FLIP_AXES:
                    x = torch.flip(image, axes) if axes else image
                    logits = inferer(x, self.network)
                    logits = torch.flip(logits, axes) if axes else logits
                    members.append(logits.max(dim=1).indices[0].numpy().astype(np.uint8))
                out.append(members)
        return out

    def predict(self, data: LoadedSet) -> list[np.ndarray]:
        """One pass without flips (what infer ``segmentation`` serves)."""
        return argmax_labels(self.network, data, window_inferer(self.settings))

    @property
    def served(self) -> torch.nn.Module:
        return self.network
