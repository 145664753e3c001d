"""Label maps as files on their image's grid, 2D and 3D: one reader, one writer.

A label version is written in its image's kind of file: a NIfTI (``.nii.gz``) with the
image's affine for volumes (NIfTI / NRRD images), a PNG for pictures (PNG / JPEG / TIFF).
Files hold the app's stored values; code works with class indices
(:mod:`emlabel.data.label_values`). Arrays use MONAI ``LoadImage``'s axes (a PNG is
``[width, height]``), so a label read here lines up with the image the transforms read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from emlabel.data.label_values import to_class_indices, to_stored_values
from emlabel.data.validation import PICTURE_SUFFIXES, first_channel, read_array
from emlabel.settings import AppSettings


def is_picture(path: str | os.PathLike[str]) -> bool:
    """True for 2D picture files (PNG / JPEG / TIFF)."""
    return str(path).lower().endswith(PICTURE_SUFFIXES)


def label_suffix_for(image: str | os.PathLike[str]) -> str:
    """The file type a label of ``image`` is written as: ``.png`` or ``.nii.gz``."""
    return ".png" if is_picture(image) else ".nii.gz"


def read_label(path: str | os.PathLike[str], *, settings: AppSettings) -> np.ndarray:
    """A label file as class indices (int64), spatial axes only."""
    array, _ = read_array(path)
    return np.asarray(to_class_indices(first_channel(array, path), settings)).astype(np.int64)


def image_affine(image: str | os.PathLike[str]) -> np.ndarray:
    """The voxel-to-world affine a label of ``image`` must carry (header only for NIfTI)."""
    if str(image).endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asarray(nib.load(str(image)).affine, dtype=np.float64)
    return read_array(image)[1].affine


def write_label(
    indices: np.ndarray, *, image: str | os.PathLike[str], path: Path, settings: AppSettings
) -> Path:
    """Write class ``indices`` (on ``image``'s grid) as ``path`` in the image's file type.

    ``path``'s suffix is replaced by :func:`label_suffix_for`; returns the path written.
    """
    stored = np.asarray(to_stored_values(np.asarray(indices), settings))
    dtype = np.uint8 if int(stored.max(initial=0)) < 256 else np.uint16
    suffix = label_suffix_for(image)
    name = path.name.removesuffix(".nii.gz").removesuffix(path.suffix) if path.suffix else path.name
    out = path.with_name(name + suffix)
    if suffix == ".png":
        from monai.data import PILWriter

        writer = PILWriter(output_dtype=dtype, scale=None)
        writer.set_data_array(stored.astype(dtype), channel_dim=None)
        writer.set_metadata({"spatial_shape": stored.shape}, resample=False)
        writer.write(str(out))
    else:
        import nibabel as nib

        nib.save(nib.Nifti1Image(stored.astype(dtype), image_affine(image)), str(out))
    return out
