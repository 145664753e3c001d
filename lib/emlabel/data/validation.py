"""Checks that an image id is safe and that a label file fits its image.

Stock MONAI Label stores whatever is uploaded (even a text file) and then fails at
training time. EMLabel refuses such labels up front with the reason.
"""

from __future__ import annotations

import bz2
import dataclasses
import math
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from emlabel.errors import InvalidLabelError, InvalidRequestError

LABEL_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".png", ".tif", ".tiff")
"""Label file types :func:`validate_label_file` accepts (what the datastore can store)."""

PICTURE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
"""2D picture files: no spacing, and a trailing colour axis (RGB / RGBA) when not grey."""

MAX_NIFTI_HEADER_BYTES = 16 * 2**20
"""Largest header + extensions (``vox_offset``) of a NIfTI label. nibabel reads extensions
eagerly, so a small gzip label could otherwise inflate them to gigabytes on ``nib.load``."""

_CHUNK = 2**20
_NRRD_ITEMSIZE: dict[str, int] = {
    name: size
    for size, names in {
        1: "signed char|int8|int8_t|uchar|unsigned char|uint8|uint8_t",
        2: "short|short int|signed short|signed short int|int16|int16_t|ushort|unsigned short"
        "|unsigned short int|uint16|uint16_t",
        4: "int|signed int|int32|int32_t|uint|unsigned int|uint32|uint32_t|float",
        8: "longlong|long long|long long int|signed long long|signed long long int|int64"
        "|int64_t|ulonglong|unsigned long long|unsigned long long int|uint64|uint64_t|double",
    }.items()
    for name in names.split("|")
}
"""Bytes per voxel of each NRRD ``type`` (the NRRD spec's names)."""


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

    The array has the axes the file's header declares (no channel axis is added or
    dropped). Raises InvalidLabelError when unreadable.
    """
    from monai.transforms import LoadImage  # heavy import; only when reading

    try:
        data = LoadImage(image_only=True, dtype=None)(str(path))
    except Exception as e:  # any reader failure means: not an image we can use
        raise InvalidLabelError(f"{Path(path).name}: not a readable image file ({e})") from e
    array = np.asarray(data)
    affine = np.asarray(data.affine, dtype=np.float64)
    return array, Geometry(shape=tuple(int(s) for s in array.shape), affine=affine)


def spatial_shape(shape: Sequence[int], path: str | os.PathLike[str]) -> tuple[int, ...]:
    """The spatial axes of an array :func:`read_array` gave for ``path`` (a picture's
    trailing RGB / RGBA axis dropped)."""
    shape = tuple(int(s) for s in shape)
    if str(path).lower().endswith(PICTURE_SUFFIXES) and len(shape) == 3 and shape[-1] in (3, 4):
        return shape[:2]
    return shape


def first_channel(array: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
    """A label array without a picture's colour axis (its first channel: R of RGB)."""
    if spatial_shape(array.shape, path) != tuple(array.shape):
        return array[..., 0]
    return array


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
    read_values: Callable[[np.ndarray], np.ndarray] | None = None,
) -> LabelReport:
    """Refuse a label whose grid, orientation or values do not fit the image and label map.

    ``num_classes`` counts background, so valid values are ``0 .. num_classes - 1`` after
    ``read_values`` (the app's stored value -> class index rule,
    :func:`emlabel.data.label_values.to_class_indices`) when given.
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
    if read_values is not None:
        label = read_values(label)
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
    read_values: Callable[[np.ndarray], np.ndarray] | None = None,
) -> LabelReport:
    """Check the label's header against the image, then read both and run :func:`check_label`.

    The header check comes first and reads no voxel data, so a small compressed file whose
    header claims a huge volume (a decompression bomb) is refused before it is inflated.
    """
    label_shape, nrrd_header = _label_header(label_path)
    try:
        image_header = header_shape(image_path)
    except InvalidLabelError as e:
        raise InvalidRequestError(f"the image itself cannot be read: {e.message}") from e
    _check_header_shape(
        spatial_shape(label_shape, label_path), spatial_shape(image_header, image_path)
    )
    if nrrd_header is not None:
        _check_nrrd_inflation(label_path, nrrd_header)
    label, label_geometry = read_array(label_path)
    label = first_channel(label, label_path)
    try:
        _, image_geometry = read_array(image_path)
    except InvalidLabelError as e:
        raise InvalidRequestError(f"the image itself cannot be read: {e.message}") from e
    image_geometry = Geometry(
        shape=spatial_shape(image_geometry.shape, image_path), affine=image_geometry.affine
    )
    return check_label(
        label,
        Geometry(shape=tuple(label.shape), affine=label_geometry.affine),
        image_geometry,
        num_classes=num_classes,
        affine_tolerance=affine_tolerance,
        read_values=read_values,
    )


def header_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """Shape a (trusted) image file's header declares, the axes :func:`read_array` gives.

    Header only for NIfTI (nibabel is lazy) and NRRD; other formats are read in full.
    """
    name = str(path)
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            return tuple(int(n) for n in nib.load(name).shape)
        if name.endswith(".nrrd"):
            import nrrd

            return tuple(int(n) for n in nrrd.read_header(name)["sizes"])
    except Exception as e:  # unreadable header: same message as read_array
        raise InvalidLabelError(f"{Path(path).name}: not a readable image file ({e})") from e
    return read_array(path)[1].shape


MAX_IMAGE_VOXELS = 2**27
"""Largest image a client may upload for infer, before and after resampling to the target
spacing (2**27 = 512^3 voxels; a 16^3 file with a 300 mm spacing would otherwise resample
to billions of voxels)."""


def check_image_file(path: str | os.PathLike[str], *, target_spacing: Sequence[float]) -> None:
    """Refuse (422) an uploaded image that is too large (:func:`check_image_header`) or whose
    data does not decompress and read."""
    check_image_header(path, target_spacing=target_spacing)
    read_array(path)


def check_image_header(path: str | os.PathLike[str], *, target_spacing: Sequence[float]) -> None:
    """Refuse (422) an image whose header is unreadable or says it is too large to process.

    No voxel data is read: the voxel count, as stored and as resampled to ``target_spacing``
    (count x prod(spacing / target)), must stay within :data:`MAX_IMAGE_VOXELS`.
    """
    shape, header = _label_header(path)
    shape = spatial_shape(shape, path)
    spacing = _header_spacing(path, header, len(shape))
    stored = math.prod(shape)
    pairs = list(zip(spacing, target_spacing, strict=False))
    resampled = stored * math.prod(s / t for s, t in pairs if s > 0 and t > 0)
    if stored > MAX_IMAGE_VOXELS or resampled > MAX_IMAGE_VOXELS:
        raise InvalidLabelError(
            f"{Path(path).name}: {stored} voxels ({resampled:.3g} at the target spacing) is more "
            f"than the {MAX_IMAGE_VOXELS} a request may process"
        )


def _header_spacing(
    path: str | os.PathLike[str], header: dict[str, Any] | None, ndim: int
) -> tuple[float, ...]:
    """Voxel spacing (mm) from a NIfTI or NRRD header (1.0 where the header has none)."""
    if str(path).lower().endswith(PICTURE_SUFFIXES):
        return (1.0,) * ndim
    if header is None:  # NIfTI: nibabel reads the zooms from the header only
        import nibabel as nib

        zooms = nib.load(str(path)).header.get_zooms()
        return tuple(float(abs(z)) or 1.0 for z in zooms[:ndim])
    if "space directions" in header:
        rows = [r for r in header["space directions"] if r is not None and np.all(np.isfinite(r))]
        return tuple(float(np.linalg.norm(r)) or 1.0 for r in rows)
    return tuple(float(s) for s in header.get("spacings", [1.0] * ndim))


def _label_header(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], dict[str, Any] | None]:
    """Shape from a label file's header (and the NRRD header), reading no voxel data.

    Stricter than :func:`header_shape` (a label is client input): only ``LABEL_SUFFIXES``,
    NIfTI header + extensions at most ``MAX_NIFTI_HEADER_BYTES``, no detached NRRD data.
    """
    name = str(path)
    try:
        if name.endswith((".nii", ".nii.gz")):
            return _nifti_header_shape(name), None
        if name.endswith(".nrrd"):
            import nrrd

            header = nrrd.read_header(name)
            if "data file" in header or "datafile" in header:
                raise ValueError("a label must hold its data; detached 'data file' refused")
            return tuple(int(n) for n in header["sizes"]), header
        if name.lower().endswith(PICTURE_SUFFIXES):
            return _picture_header_shape(name), None
        raise ValueError(f"label files must be {', '.join(LABEL_SUFFIXES)}")
    except Exception as e:  # unreadable header: same message as read_array
        raise InvalidLabelError(f"{Path(path).name}: not a readable image file ({e})") from e


def _picture_header_shape(name: str) -> tuple[int, ...]:
    """Shape of a PNG / TIFF from its header (PIL opens lazily), in :func:`read_array`'s
    axes: (width, height) plus a colour axis when not single-band."""
    from PIL import Image

    with Image.open(name) as picture:
        width, height = picture.size
        bands = len(picture.getbands())
        if getattr(picture, "n_frames", 1) != 1:
            raise ValueError("a 2D label must be a single-frame picture")
    return (width, height) if bands == 1 else (width, height, bands)


def _nifti_header_shape(name: str) -> tuple[int, ...]:
    """Shape from the fixed NIfTI-1/2 header alone (extensions and data are not read)."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    with ImageOpener(name) as f:  # decompresses by suffix, as nib.load does
        block = f.read(nib.Nifti2Header.template_dtype.itemsize)
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        size = klass.template_dtype.itemsize
        if klass.may_contain_header(block[:size]):
            header = klass(block[:size])  # checked as nib.load checks it
            break
    else:
        raise ValueError("no NIfTI-1 or NIfTI-2 header")
    offset = float(header["vox_offset"])
    if not offset <= MAX_NIFTI_HEADER_BYTES:
        raise ValueError(
            f"header and extensions take {offset:.0f} bytes (at most {MAX_NIFTI_HEADER_BYTES})"
        )
    return tuple(int(n) for n in header.get_data_shape())


def _check_header_shape(label_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> None:
    """Refuse a label whose header shape (less a singleton channel) or size is not the image's."""
    shape = label_shape
    if len(shape) == len(image_shape) + 1:
        shape = shape[1:] if shape[0] == 1 else shape[:-1] if shape[-1] == 1 else shape
    voxels, image_voxels = math.prod(label_shape), math.prod(image_shape)
    if shape != image_shape or voxels > image_voxels:
        more = (
            f" (its header claims {voxels} voxels, the image has {image_voxels})"
            if voxels > image_voxels
            else ""
        )
        raise InvalidLabelError(
            f"label shape {label_shape} does not match the image shape {image_shape}{more}"
        )


def _check_nrrd_inflation(path: str | os.PathLike[str], header: dict[str, Any]) -> None:
    """Refuse a compressed NRRD whose data inflates beyond what its header declares.

    pynrrd inflates the whole stream before checking its size; this streams it with
    bounded memory and stops at the first byte too many.
    """
    import nrrd

    encoding = str(header.get("encoding", "raw")).lower()
    if encoding not in ("gzip", "gz", "bzip2", "bz2"):
        return  # raw, text, hex: never larger than the file
    itemsize = _NRRD_ITEMSIZE.get(str(header.get("type", "")).lower(), 8)
    budget = math.prod(int(n) for n in header["sizes"]) * itemsize
    budget += max(int(header.get("byte skip", 0)), 0)
    try:
        with open(path, "rb") as fh:
            nrrd.read_header(fh)
            for _ in range(int(header.get("line skip", 0))):
                fh.readline()
            inflated = _inflated_size(fh, gzip=encoding in ("gzip", "gz"), limit=budget)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise InvalidLabelError(f"{Path(path).name}: not a readable image file ({e})") from e
    if inflated > budget:
        raise InvalidLabelError(
            f"{Path(path).name}: its compressed data inflates beyond the {budget} bytes "
            "its header declares"
        )


def _inflated_size(fh: BinaryIO, *, gzip: bool, limit: int) -> int:
    """Bytes the gzip/bzip2 stream in ``fh`` inflates to, counting stopped past ``limit``."""
    total = 0
    if gzip:
        z = zlib.decompressobj(zlib.MAX_WBITS | 16)  # one gzip member, as pynrrd reads
        while total <= limit and not z.eof and (data := z.unconsumed_tail or fh.read(_CHUNK)):
            total += len(z.decompress(data, _CHUNK))
        return total
    b = bz2.BZ2Decompressor()
    while total <= limit and not b.eof:
        data = fh.read(_CHUNK) if b.needs_input else b""
        if b.needs_input and not data:
            break
        total += len(b.decompress(data, _CHUNK))
    return total


def image_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """Spatial shape of an image file (header only for NIfTI)."""
    if str(path).endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            return tuple(int(n) for n in nib.load(str(path)).shape[:3])
        except Exception as e:  # unreadable header: same message as read_array
            raise InvalidLabelError(f"{Path(path).name}: not a readable image file ({e})") from e
    return spatial_shape(read_array(path)[1].shape, path)
