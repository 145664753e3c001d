"""Whole images and labels in memory on one padded grid, and the way back to each image.

Methods such as AIDE train on whole items held in memory (the data sets here are small).
Every item goes through the app's preprocessing (orientation, spacing, window) and is then
padded to one common shape; MONAI records both on the image MetaTensor, so a label made on
that grid is mapped back onto the original image exactly with MONAI's ``Invertd``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from emlabel.data.restore_label import RestoreLabeld
from emlabel.settings import AppSettings
from emlabel.transforms import load_and_normalise


@dataclasses.dataclass
class LoadedSet:
    """Items on a common grid: images ``[N, 1, *spatial]``, labels ``[N, *spatial]``."""

    ids: list[str]
    images: torch.Tensor
    labels: torch.Tensor
    has_label: torch.Tensor
    processed: list[MetaTensor]
    """Each processed image (carries the applied transforms, used for inversion)."""
    inverter: mt.Compose
    """The transforms to undo (same instances as applied)."""

    def subset(self, indices: Sequence[int]) -> LoadedSet:
        """The items at ``indices`` on the same grid (same padding): a rank's share."""
        rows = list(indices)
        return LoadedSet(
            ids=[self.ids[i] for i in rows],
            images=self.images[rows],
            labels=self.labels[rows],
            has_label=self.has_label[rows],
            processed=[self.processed[i] for i in rows],
            inverter=self.inverter,
        )


def load_items(
    items: Sequence[dict[str, Any]], *, settings: AppSettings, multiple_of: int
) -> LoadedSet:
    """Load ``{"id", "image", "label"?}`` items; pad to a shared shape divisible by ``multiple_of``."""
    if not items:
        raise ValueError("no images to load")
    keys = ("image", "label")
    prepare = mt.Compose(load_and_normalise(settings, keys, allow_missing_keys=True))
    loaded = []
    for item in items:
        data = {"image": item["image"]} | ({"label": item["label"]} if item.get("label") else {})
        loaded.append(prepare(data))
    shape = [
        math.ceil(max(d["image"].shape[1 + a] for d in loaded) / multiple_of) * multiple_of
        for a in range(settings.spatial_dims)
    ]
    pad = mt.SpatialPadd(keys=keys, spatial_size=shape, allow_missing_keys=True)
    padded = [pad(d) for d in loaded]
    labels = [
        d["label"][0].long() if "label" in d else torch.zeros(shape, dtype=torch.long)
        for d in padded
    ]
    return LoadedSet(
        ids=[str(item["id"]) for item in items],
        images=torch.stack([torch.as_tensor(d["image"]).float() for d in padded]),
        labels=torch.stack([torch.as_tensor(label) for label in labels]),
        has_label=torch.tensor(["label" in d for d in padded]),
        processed=[d["image"] for d in padded],
        inverter=mt.Compose([*prepare.transforms, pad]),
    )


def to_original_grid(
    label: torch.Tensor, processed_image: MetaTensor, inverter: mt.Compose
) -> np.ndarray:
    """A label on the padded grid, back on its original image's voxel grid (nearest)."""
    data = {"image": processed_image, "label": MetaTensor(label[None].to(torch.uint8))}
    out = RestoreLabeld(keys="label", transform=inverter, orig_key="image")(data)["label"]
    return np.asarray(out[0]).round().astype(np.uint8)
