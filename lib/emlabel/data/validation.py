"""Checks that an image id is safe and that a label file fits its image.

Stock MONAI Label stores whatever is uploaded (even a text file) and then fails at
training time. EMLabel refuses such labels up front with the reason.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from emlabel.errors import InvalidLabelError, InvalidRequestError


def check_image_id(image_id: str) -> str:
    """Refuse ids that are empty, are paths, or could leave the studies folder."""
    if not isinstance(image_id, str) or not image_id.strip():
        raise InvalidRequestError("image id is empty")
    bad = (
        image_id.startswith(("/", "~"))
        or os.path.isabs(image_id)
        or ".." in image_id
        or "/" in image_id
        or "\\" in image_id
        or "\x00" in image_id
    )
    if bad:
        raise InvalidRequestError(
            f"image id {image_id!r} is a path; give the id of an image in the studies folder"
        )
    return image_id


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Spatial shape and voxel-to-world affine of an image file."""

    shape: tuple[int, ...]
    affine: np.ndarray


def read_array(path: str | os.PathLike[str]) -> tuple[np.ndarray, Geometry]:
    """Read an image/label file with MONAI's LoadImage (NIfTI, NRRD, ...): array + geometry.

    A leading channel axis of size 1 is dropped. Raises InvalidLabelError when unreadable.
    """
    from monai.transforms import LoadImage  # heavy import; only when reading

    try:
        data = LoadImage(image_only=True, dtype=None)(str(path))
    except Exception as e:  # any reader failure means: not an image we can use
        raise InvalidLabelError(f"{Path(path).name}: not a readable image file ({e})") from e
    array = np.asarray(data)
    affine = np.asarray(data.affine, dtype=np.float64)
    return array, Geometry(shape=tuple(int(s) for s in array.shape), affine=affine)


@dataclasses.dataclass(frozen=True)
class LabelReport:
    """What a valid label holds."""

    shape: tuple[int, ...]
    values: tuple[int, ...]


def check_label(
    label: np.ndarray,
    label_geometry: Geometry,
    image_geometry: Geometry,
    *,
    num_classes: int,
    affine_tolerance: float,
) -> LabelReport:
    """Refuse a label whose grid, orientation or values do not fit the image and label map.

    ``num_classes`` counts background, so valid values are ``0 .. num_classes - 1``.
    """
    if label.shape != image_geometry.shape:
        raise InvalidLabelError(
            f"label shape {label.shape} does not match the image shape {image_geometry.shape}"
        )
    diff = float(np.max(np.abs(label_geometry.affine - image_geometry.affine)))
    if diff > affine_tolerance:
        raise InvalidLabelError(
            "label geometry (origin/spacing/orientation) differs from the image's by "
            f"{diff:.4g} (tolerance {affine_tolerance}); resample the label onto the image grid"
        )
    if label.size and not np.all(np.isfinite(label)):
        raise InvalidLabelError("label has NaN or infinite values")
    if not np.issubdtype(label.dtype, np.integer) and not np.all(np.equal(np.mod(label, 1), 0)):
        raise InvalidLabelError("label has non-integer values; a label map holds class numbers")
    values = tuple(int(v) for v in np.unique(label))
    bad = [v for v in values if v < 0 or v >= num_classes]
    if bad:
        raise InvalidLabelError(
            f"label values {bad} are outside the app's label map (0..{num_classes - 1})"
        )
    return LabelReport(shape=label.shape, values=values)


def validate_label_file(
    label_path: str | os.PathLike[str],
    image_path: str | os.PathLike[str],
    *,
    num_classes: int,
    affine_tolerance: float,
) -> LabelReport:
    """Read both files and run :func:`check_label`."""
    label, label_geometry = read_array(label_path)
    try:
        _, image_geometry = read_array(image_path)
    except InvalidLabelError as e:
        raise InvalidRequestError(f"the image itself cannot be read: {e.message}") from e
    return check_label(
        label,
        label_geometry,
        image_geometry,
        num_classes=num_classes,
        affine_tolerance=affine_tolerance,
    )


def image_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """Spatial shape of an image file (header only for NIfTI)."""
    if str(path).endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            return tuple(int(n) for n in nib.load(str(path)).shape[:3])
        except Exception as e:  # unreadable header: same message as read_array
            raise InvalidLabelError(f"{Path(path).name}: not a readable image file ({e})") from e
    return read_array(path)[1].shape
