"""Relabel foreign label files onto the app's structures before importing them.

A label file from elsewhere (TotalSegmentator, another tool, another site) stores its own
values, e.g. liver = 5. ``--map 5=liver,1=spleen`` says which of its values are which of the
app's structures; each file is rewritten with ``v -> stored value of NAME`` for mapped
values and every other nonzero value -> 0 (dropped), then imported as usual
(:func:`emlabel.imports.import_labels`, all-or-nothing).

The rewritten file has the source's format and geometry: NIfTI through nibabel (same affine
and header), NRRD through pynrrd (same header), PNG / TIFF through PIL (same pixel order).
These are the libraries MONAI's ``LoadImage`` reads with (:func:`~emlabel.data.validation.
read_array`), so the values seen here are the ones validation sees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from emlabel.errors import InvalidLabelError, InvalidRequestError
from emlabel.imports import ImportPlan

PICTURE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MapReport:
    """What remapping one label did, in voxel counts per source value."""

    mapped: Mapping[int, tuple[int, int]]
    """Source value -> (stored value it became, voxels), for mapped values in the file."""
    dropped: Mapping[int, int]
    """Source value -> voxels, for nonzero values not in the map (set to background)."""
    missing: tuple[int, ...] = ()
    """Mapped source values the file does not hold."""

    @property
    def mapped_voxels(self) -> int:
        return sum(voxels for _, voxels in self.mapped.values())

    @property
    def dropped_voxels(self) -> int:
        return sum(self.dropped.values())


def parse_value_map(text: str, *, structures: Mapping[str, int]) -> dict[int, int]:
    """``"5=liver,1=spleen"`` -> ``{5: structures["liver"], 1: structures["spleen"]}``.

    ``structures`` is the app's structure name -> the value its label files store
    (``AppSettings.stored_label_map``). Several values may name one structure (a merge);
    one value may not name two. InvalidRequestError for a malformed entry, a value that is
    not a positive integer, or a name the app does not have (the valid names listed).
    """
    value_map: dict[int, int] = {}
    names: dict[int, str] = {}
    entries = [e.strip() for e in str(text).split(",") if e.strip()]
    if not entries:
        raise InvalidRequestError("--map is empty; give VALUE=NAME[,VALUE=NAME...]")
    for entry in entries:
        raw, sep, name = (part.strip() for part in entry.partition("="))
        if not sep or not raw or not name:
            raise InvalidRequestError(f"--map entry {entry!r} is not VALUE=NAME")
        try:
            value = int(raw)
        except ValueError:
            raise InvalidRequestError(
                f"--map entry {entry!r}: the value {raw!r} is not an integer"
            ) from None
        if value <= 0:
            raise InvalidRequestError(
                f"--map entry {entry!r}: 0 is background and stays 0; map positive values"
            )
        if name not in structures:
            raise InvalidRequestError(
                f"--map entry {entry!r}: the app has no structure {name!r}; "
                f"valid names: {', '.join(structures)}"
            )
        if names.get(value, name) != name:
            raise InvalidRequestError(
                f"--map gives value {value} two names: {names[value]}, {name}"
            )
        names[value], value_map[value] = name, int(structures[name])
    return value_map


def remap_label(array: np.ndarray, value_map: Mapping[int, int]) -> tuple[np.ndarray, MapReport]:
    """Mapped values -> their stored value, every other value -> 0; plus what was done.

    The result is the smallest unsigned integer type holding the stored values. A label
    with non-integer or non-finite values is refused (InvalidLabelError).
    """
    array = np.asarray(array)
    exact = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)
    if not exact and not (np.all(np.isfinite(array)) and np.all(np.mod(array, 1) == 0)):
        raise InvalidLabelError("label has non-integer values; a label map holds class numbers")
    values, counts = np.unique(array, return_counts=True)
    top = max(value_map.values(), default=0)
    dtype = next(t for t in (np.uint8, np.uint16, np.uint32) if top <= np.iinfo(t).max)
    out = np.zeros(array.shape, dtype)
    mapped: dict[int, tuple[int, int]] = {}
    dropped: dict[int, int] = {}
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        value = int(value)
        if value in value_map:
            out[array == value] = value_map[value]
            mapped[value] = (value_map[value], int(count))
        elif value != 0:
            dropped[value] = int(count)
    missing = tuple(sorted(set(value_map) - set(mapped)))
    return out, MapReport(mapped=mapped, dropped=dropped, missing=missing)


def remap_label_file(src: str | Path, dest: str | Path, value_map: Mapping[int, int]) -> MapReport:
    """Rewrite the label file ``src`` as ``dest`` (same format and geometry), remapped."""
    src, dest = Path(src), Path(dest)
    name = src.name.lower()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if name.endswith((".nii", ".nii.gz")):
            return _remap_nifti(src, dest, value_map)
        if name.endswith(".nrrd"):
            return _remap_nrrd(src, dest, value_map)
        if name.endswith(PICTURE_SUFFIXES):
            return _remap_picture(src, dest, value_map)
    except InvalidLabelError as e:
        raise InvalidLabelError(f"{src.name}: {e.message}") from e
    except Exception as e:  # any reader failure means: not a label we can use
        raise InvalidLabelError(f"{src.name}: not a readable label file ({e})") from e
    raise InvalidRequestError(f"{src}: cannot remap this file type")


def _remap_nifti(src: Path, dest: Path, value_map: Mapping[int, int]) -> MapReport:
    import nibabel as nib

    img = nib.load(str(src))
    out, report = remap_label(np.asanyarray(img.dataobj), value_map)
    header = img.header.copy()
    header.set_data_dtype(out.dtype)
    header.set_slope_inter(1.0, 0.0)
    nib.save(type(img)(out, img.affine, header), str(dest))
    return report


def _remap_nrrd(src: Path, dest: Path, value_map: Mapping[int, int]) -> MapReport:
    import nrrd

    if {"data file", "datafile"} & set(nrrd.read_header(str(src))):
        raise InvalidLabelError("a label must hold its data; detached 'data file' refused")
    data, header = nrrd.read(str(src))
    out, report = remap_label(data, value_map)
    nrrd.write(str(dest), out, header)  # type, sizes, dimension follow ``out``
    return report


def _remap_picture(src: Path, dest: Path, value_map: Mapping[int, int]) -> MapReport:
    """PNG / TIFF: first band only (as validation reads a colour label), one frame."""
    from PIL import Image

    with Image.open(src) as picture:
        if getattr(picture, "n_frames", 1) != 1:
            raise InvalidLabelError("a 2D label must be a single-frame picture")
        array = np.asarray(picture)
        fmt = picture.format
    if array.ndim == 3:
        array = array[..., 0]
    out, report = remap_label(array.astype(np.int64), value_map)
    Image.fromarray(out).save(dest, format=fmt)
    return report


def remap_plans(
    plans: Iterable[ImportPlan], value_map: Mapping[int, int], folder: str | Path
) -> tuple[list[ImportPlan], list[MapReport]]:
    """Remap every plan's file into ``folder`` (one subfolder per file, names kept)."""
    remapped: list[ImportPlan] = []
    reports: list[MapReport] = []
    for i, plan in enumerate(plans):
        dest = Path(folder) / f"{i:04d}" / plan.path.name
        reports.append(remap_label_file(plan.path, dest, value_map))
        remapped.append(dataclasses.replace(plan, path=dest))
    return remapped, reports


def report_lines(
    plans: Iterable[ImportPlan], reports: Iterable[MapReport], *, names: Mapping[int, str]
) -> list[str]:
    """One line per file (values mapped and dropped, with voxel counts) and a total line.

    ``names`` is stored value -> structure name.
    """
    lines: list[str] = []
    total_mapped = total_dropped = 0
    for plan, report in zip(plans, reports, strict=True):
        parts = [
            f"{v} -> {names.get(to, to)} ({voxels} voxels)"
            for v, (to, voxels) in sorted(report.mapped.items())
        ]
        parts += [f"dropped {v} ({voxels} voxels)" for v, voxels in sorted(report.dropped.items())]
        parts += [f"{v} not in the file" for v in report.missing]
        lines.append(f"{plan.path.name}: " + ("; ".join(parts) or "background only"))
        total_mapped += report.mapped_voxels
        total_dropped += report.dropped_voxels
    lines.append(
        f"total: {len(lines)} files, {total_mapped} voxels mapped, {total_dropped} dropped"
    )
    return lines
