"""The MONAI transform chains shared by training and inference.

Training and inference must see images the same way (orientation, spacing, intensity
window); both chains are built here from the app settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai import transforms as mt

from emlabel.data.channels import PlannedChannelsd
from emlabel.data.label_values import ClassIndicesd, StoredValuesd
from emlabel.data.restore_label import RestoreLabeld
from emlabel.settings import AppSettings


def load_and_normalise(
    settings: AppSettings, keys: Sequence[str], *, allow_missing_keys: bool = False
) -> list[mt.Transform]:
    """Read, set channels, orient (RAS), resample to ``target_spacing``, normalise.

    2D and 3D alike (``spatial_dims``); labels become class indices
    (:mod:`emlabel.data.label_values`).
    """
    keys = tuple(keys)
    modes = tuple("bilinear" if k == "image" else "nearest" for k in keys)
    missing = {"allow_missing_keys": allow_missing_keys}
    label_keys = tuple(k for k in keys if k != "image")
    chain: list[mt.Transform] = [
        mt.LoadImaged(keys=keys, image_only=False, **missing),
        mt.EnsureChannelFirstd(keys=keys, **missing),
        PlannedChannelsd(keys=keys, in_channels=settings.in_channels, **missing),
    ]
    if label_keys:
        chain.append(ClassIndicesd(keys=label_keys, settings=settings, **missing))
    return [
        *chain,
        mt.Orientationd(keys=keys, axcodes="RAS"[: settings.spatial_dims], **missing),
        mt.Spacingd(keys=keys, pixdim=settings.target_spacing, mode=modes, **missing),
        intensity_normalisation(settings),
        mt.EnsureTyped(keys=keys, **missing),
    ]


def intensity_normalisation(settings: AppSettings) -> mt.Transform:
    """The image's intensity normalisation (``settings.normalisation``).

    - ``window``: x -> (clip(x, lo, hi) - lo) / (hi - lo), in [0, 1];
    - ``ct``: x -> (clip(x, lo, hi) - mean) / std (nnU-Net's CT scheme: lo, hi the
      foreground's 0.5 / 99.5 percentiles, mean and std its statistics; one linear map);
    - ``zscore``: x -> (x - mean(x)) / std(x) per image and channel.
    """
    low, high = settings.intensity_window
    if settings.normalisation == "zscore":
        return mt.NormalizeIntensityd(keys="image", channel_wise=True)
    if settings.normalisation == "ct":
        mean, std = settings.intensity_stats
        return mt.ScaleIntensityRanged(
            keys="image",
            a_min=low,
            a_max=high,
            b_min=(low - mean) / std,
            b_max=(high - mean) / std,
            clip=True,
        )
    return mt.ScaleIntensityRanged(
        keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True
    )


def train_augmentation(settings: AppSettings) -> list[mt.Transform]:
    """Random patch of ``roi_size`` plus flips and mild intensity changes."""
    keys = ("image", "label")
    return [
        mt.SpatialPadd(keys=keys, spatial_size=settings.roi_size),
        mt.RandSpatialCropd(keys=keys, roi_size=settings.roi_size, random_size=False),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        mt.RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        mt.RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
    ]


def train_chain(settings: AppSettings) -> mt.Compose:
    """Everything a training item goes through."""
    return mt.Compose(
        load_and_normalise(settings, ("image", "label")) + train_augmentation(settings)
    )


def eval_chain(settings: AppSettings) -> mt.Compose:
    """Deterministic chain for validation items (whole volumes)."""
    return mt.Compose(load_and_normalise(settings, ("image", "label")))


def inference_postprocessing(
    preprocessing: mt.Compose, settings: AppSettings
) -> list[mt.Transform]:
    """Argmax at the network's resolution, back onto the input's grid, stored values.

    Memory-bounded: only the label map (one channel, uint8) is restored onto the input's
    grid, nearest neighbour (:class:`~emlabel.data.restore_label.RestoreLabeld`: the same
    voxels as MONAI's ``Invertd``, without its sampling grid), so no full-resolution copy of
    the per-class probabilities is ever made. ``preprocessing`` must be the Compose
    instance that prepared ``image``; exported bundles run ``Invertd`` (MONAI only).
    """
    return [
        mt.AsDiscreted(keys="pred", argmax=True, dtype=torch.uint8),
        StoredValuesd(keys="pred", settings=settings),  # at the network's resolution: cheap
        RestoreLabeld(keys="pred", transform=preprocessing, orig_key="image"),
    ]
