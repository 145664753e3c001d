"""The MONAI transform chains shared by training and inference.

Training and inference must see images the same way (orientation, spacing, intensity
window); both chains are built here from the app settings.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai import transforms as mt

from emlabel.settings import AppSettings


def load_and_normalise(
    settings: AppSettings, keys: Sequence[str], *, allow_missing_keys: bool = False
) -> list[mt.Transform]:
    """Read, RAS-orient, resample to ``target_spacing`` and window intensities to [0, 1]."""
    keys = tuple(keys)
    modes = tuple("bilinear" if k == "image" else "nearest" for k in keys)
    low, high = settings.intensity_window
    missing = {"allow_missing_keys": allow_missing_keys}
    return [
        mt.LoadImaged(keys=keys, image_only=False, **missing),
        mt.EnsureChannelFirstd(keys=keys, **missing),
        mt.Orientationd(keys=keys, axcodes="RAS", **missing),
        mt.Spacingd(keys=keys, pixdim=settings.target_spacing, mode=modes, **missing),
        mt.ScaleIntensityRanged(
            keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True
        ),
        mt.EnsureTyped(keys=keys, **missing),
    ]


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


def inference_postprocessing(preprocessing: mt.Compose) -> list[mt.Transform]:
    """Softmax, back onto the input image's grid (MONAI's exact inverse), then argmax.

    ``preprocessing`` must be the Compose instance that prepared ``image``. Exported bundles
    use the same chain, so server and bundle give the same labels.
    """
    return [
        mt.Activationsd(keys="pred", softmax=True),
        mt.Invertd(
            keys="pred",
            transform=preprocessing,
            orig_keys="image",
            nearest_interp=False,
            to_tensor=True,
        ),
        mt.AsDiscreted(keys="pred", argmax=True),
    ]
