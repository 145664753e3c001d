"""The fingerprint of a studies folder: what its images and labels are, read from the files.

Like nnU-Net's dataset fingerprint: per image the spatial shape, spacing, channels and
intensity range, plus random intensity samples (inside the labels' foreground and over
whole images) that :func:`emlabel.planning.plan.make_plan` turns into settings. Images
are read as the app reads them (MONAI ``LoadImage`` then ``EnsureChannelFirst``; a PNG is
``[C, W, H]``). Labels come from ``labels/final``; when there are no finals at all, from any
other ``labels/<tag>`` folder (statistics only need some label).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from emlabel.errors import NotFoundError, SettingsError

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".nii.gz", ".nii", ".nrrd", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
)  # fmt: skip
"""Image files of a studies folder (its top level)."""

LABEL_FILE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".png", ".tif", ".tiff")
"""Label files looked for in ``labels/<tag>/``."""

PICTURE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
"""2D pictures: no spacing in the file (1.0 is recorded)."""

FINAL_TAG = "final"
DATASET_JSON = "dataset.json"
SAMPLE_PER_IMAGE = 20_000
"""Most intensities sampled per image (for the foreground and for the whole image)."""


def _suffix(name: str, suffixes: tuple[str, ...]) -> str | None:
    lower = name.lower()
    return next((s for s in suffixes if lower.endswith(s)), None)


def file_id(name: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> str | None:
    """Image id of a file name (the name without its suffix), or None when not such a file."""
    suffix = _suffix(name, suffixes)
    return name[: -len(suffix)] if suffix and len(name) > len(suffix) else None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageRecord:
    """One image as read (after ``EnsureChannelFirst``) and the label it was paired with."""

    image_id: str
    file: str
    spatial_shape: tuple[int, ...]
    spacing: tuple[float, ...]
    channels: int
    equal_channels: bool
    """True for grey: one channel, or colour channels (R, G, B) that are equal (+-1)."""
    dtype: str
    min: float
    max: float
    label_file: str | None = None
    """Path of the label read, relative to the studies folder."""
    label_dtype: str | None = None
    label_values: tuple[int, ...] = ()
    foreground_voxels: int = 0

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial_shape)

    @property
    def label_is_8bit_picture(self) -> bool:
        """True when the label is an 8-bit PNG / TIFF (possibly a 0..255 mask)."""
        return (
            self.label_file is not None
            and self.label_dtype == "uint8"
            and _suffix(self.label_file, PICTURE_SUFFIXES) is not None
        )


def intensity_summary(values: np.ndarray) -> dict[str, float | int]:
    """Count, min, max, mean, std and 0.5 / 50 / 99.5 percentiles of a sample (JSON-able)."""
    if values.size == 0:
        return {"n": 0}
    p_lo, p_mid, p_hi = np.percentile(values, [0.5, 50.0, 99.5])
    return {
        "n": int(values.size),
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "percentile_00_5": float(p_lo),
        "median": float(p_mid),
        "percentile_99_5": float(p_hi),
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fingerprint:
    """What :func:`fingerprint_studies` read; ``to_dict`` summarises the samples for JSON."""

    studies: str
    images_found: int
    images: tuple[ImageRecord, ...]
    label_source: str
    """``final``, ``other tags`` (no finals at all: any tag's file per image) or ``none``."""
    label_values: tuple[int, ...]
    """Every value found in the labels read (background 0 included when present)."""
    dataset_labels: tuple[tuple[str, int], ...] = ()
    """``dataset.json``'s foreground structures (name, stored value), by value."""
    dataset_modality: str | None = None
    """``dataset.json``'s ``channel_names["0"]``."""
    notes: tuple[str, ...] = ()
    foreground_sample: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(0, np.float32), repr=False, compare=False
    )
    """Intensities sampled inside the labels' foreground (label > 0), grey value per voxel."""
    intensity_sample: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(0, np.float32), repr=False, compare=False
    )
    """Intensities sampled over whole images."""

    @property
    def labeled(self) -> int:
        """Images read with a label."""
        return sum(r.label_file is not None for r in self.images)

    def to_dict(self) -> dict[str, Any]:
        return {
            "studies": self.studies,
            "images_found": self.images_found,
            "images": [dataclasses.asdict(r) for r in self.images],
            "labeled": self.labeled,
            "label_source": self.label_source,
            "label_values": list(self.label_values),
            "dataset_labels": {name: value for name, value in self.dataset_labels},
            "dataset_modality": self.dataset_modality,
            "notes": list(self.notes),
            "foreground_intensities": intensity_summary(self.foreground_sample),
            "intensities": intensity_summary(self.intensity_sample),
        }


def list_images(studies: Path) -> list[Path]:
    """Image files at the top level of ``studies`` (hidden names and folders skipped), sorted."""
    return sorted(
        p
        for p in studies.iterdir()
        if not p.name.startswith(".") and p.is_file() and file_id(p.name) is not None
    )


def find_labels(studies: Path) -> tuple[dict[str, Path], str]:
    """Image id -> label file: ``labels/final``; with no finals, the first other tag's file."""
    labels_dir = studies / "labels"
    final = _label_files(labels_dir / FINAL_TAG)
    if final:
        return final, FINAL_TAG
    found: dict[str, Path] = {}
    tags = sorted(p for p in labels_dir.iterdir() if p.is_dir()) if labels_dir.is_dir() else []
    for tag in tags:
        if tag.name.startswith(".") or tag.name == FINAL_TAG:
            continue
        for image_id, path in _label_files(tag).items():
            found.setdefault(image_id, path)
    return found, ("other tags" if found else "none")


def _label_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        image_id = file_id(path.name, LABEL_FILE_SUFFIXES)
        if image_id and not path.name.startswith(".") and path.is_file():
            files.setdefault(image_id, path)
    return files


def read_dataset_json(studies: Path) -> tuple[tuple[tuple[str, int], ...], str | None, list[str]]:
    """``dataset.json`` (nnU-Net v2 ``labels`` / ``channel_names``) -> structures, modality, notes.

    Labels by value, background (value 0) dropped; nnU-Net v1's ``{"1": "liver"}`` is read
    too. Region labels (lists of values) are skipped with a note.
    """
    path = studies / DATASET_JSON
    if not path.is_file():
        return (), None, []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SettingsError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a JSON object")
    notes: list[str] = []
    raw = data.get("labels") or {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: 'labels' must be an object {{name: value}}")
    if raw and all(str(k).isdigit() and isinstance(v, str) for k, v in raw.items()):
        raw = {v: int(k) for k, v in raw.items()}  # nnU-Net v1: {"0": "background", ...}
    labels: list[tuple[str, int]] = []
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int):
            notes.append(f"dataset.json label {name!r} = {value!r} is not one value: skipped")
        elif value > 0:
            labels.append((str(name), value))
    channels = data.get("channel_names") or data.get("modality") or {}
    modality = channels.get("0") if isinstance(channels, dict) else None
    return tuple(sorted(labels, key=lambda x: x[1])), (str(modality) if modality else None), notes


def choose(paths: list[Path], count: int) -> list[Path]:
    """``count`` of ``paths`` evenly spread over the (sorted) list; deterministic."""
    if len(paths) <= count:
        return list(paths)
    picks = np.unique(np.linspace(0, len(paths) - 1, count).round().astype(int))
    return [paths[i] for i in picks]


def _read(path: Path) -> Any:
    from monai.transforms import EnsureChannelFirst, LoadImage

    return EnsureChannelFirst()(LoadImage(image_only=True, dtype=None)(str(path)))


def _spacing(data: Any, path: Path) -> tuple[float, ...]:
    dims = len(data.shape) - 1
    if _suffix(path.name, PICTURE_SUFFIXES):
        return (1.0,) * dims
    affine = np.asarray(data.affine, dtype=np.float64)
    spacing = np.sqrt((affine[:dims, :dims] ** 2).sum(axis=0))
    return tuple(float(s) if s > 0 else 1.0 for s in spacing)


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if values.size > SAMPLE_PER_IMAGE:
        values = values[rng.choice(values.size, SAMPLE_PER_IMAGE, replace=False)]
    return values.astype(np.float32)


def _equal_channels(array: np.ndarray) -> bool:
    if array.shape[0] < 3:
        return True
    ref = array[0].astype(np.float64)
    return all(np.abs(array[c].astype(np.float64) - ref).max(initial=0) <= 1 for c in (1, 2))


def fingerprint_studies(studies: Path, *, max_images: int = 64, seed: int = 0) -> Fingerprint:
    """Read at most ``max_images`` images of ``studies`` (and their labels) into a Fingerprint.

    Labeled images are chosen first (they give the foreground statistics), each group evenly
    spread over its sorted list. The grey value of a voxel is the mean of its colour channels
    (alpha dropped), as an ``in_channels = 1`` app reads it.
    """
    studies = Path(studies)
    if not studies.is_dir():
        raise NotFoundError(f"studies folder {studies} does not exist")
    if max_images < 1:
        raise SettingsError(f"max_images must be at least 1, not {max_images}")
    images = list_images(studies)
    if not images:
        raise NotFoundError(
            f"{studies} has no images ({', '.join('*' + s for s in IMAGE_SUFFIXES)})"
        )
    label_files, label_source = find_labels(studies)
    dataset_labels, dataset_modality, notes = read_dataset_json(studies)
    labeled = [p for p in images if file_id(p.name) in label_files]
    unlabeled = [p for p in images if file_id(p.name) not in label_files]
    chosen = choose(labeled, max_images)
    chosen += choose(unlabeled, max_images - len(chosen))
    if len(chosen) < len(images):
        notes.append(f"read {len(chosen)} of {len(images)} images ({len(labeled)} labeled)")

    rng = np.random.default_rng(seed)
    records: list[ImageRecord] = []
    values: set[int] = set()
    foreground: list[np.ndarray] = []
    intensities: list[np.ndarray] = []
    for path in sorted(chosen):
        image_id = file_id(path.name) or path.name
        data = _read(path)
        array = np.asarray(data)
        colour = array[: min(array.shape[0], 3)]
        grey = colour.astype(np.float32).mean(axis=0) if colour.shape[0] > 1 else colour[0]
        intensities.append(_sample(grey.ravel(), rng))
        record: dict[str, Any] = {
            "image_id": image_id,
            "file": path.name,
            "spatial_shape": tuple(int(s) for s in array.shape[1:]),
            "spacing": _spacing(data, path),
            "channels": int(array.shape[0]),
            "equal_channels": _equal_channels(array),
            "dtype": str(array.dtype),
            "min": float(colour.min()),
            "max": float(colour.max()),
        }
        label_path = label_files.get(image_id)
        if label_path is not None:
            label = np.asarray(_read(label_path))[0]
            found = np.unique(label)
            if not np.array_equal(found, np.rint(found)):
                notes.append(f"{image_id}: label has non-integer values (rounded)")
            found_int = tuple(int(v) for v in np.unique(np.rint(found)))
            values.update(found_int)
            record |= {
                "label_file": label_path.relative_to(studies).as_posix(),
                "label_dtype": str(label.dtype),
                "label_values": found_int,
            }
            if label.shape != grey.shape:
                notes.append(
                    f"{image_id}: label shape {tuple(label.shape)} differs from the image's "
                    f"{tuple(grey.shape)}; no foreground statistics from it"
                )
            else:
                mask = label > 0
                record["foreground_voxels"] = int(mask.sum())
                foreground.append(_sample(grey[mask], rng))
        records.append(ImageRecord(**record))

    masks = [r for r in records if r.label_is_8bit_picture and max(r.label_values) > 1]
    if masks:
        notes.append(
            f"{len(masks)} of {sum(r.label_file is not None for r in records)} labels are 8-bit "
            f"pictures with values above 1 (up to {max(max(r.label_values) for r in masks)})"
        )

    def pooled(samples: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(samples) if samples else np.zeros(0, np.float32)

    return Fingerprint(
        studies=str(studies),
        images_found=len(images),
        images=tuple(records),
        label_source=label_source,
        label_values=tuple(sorted(values)),
        dataset_labels=dataset_labels,
        dataset_modality=dataset_modality,
        notes=tuple(notes),
        foreground_sample=pooled(foreground),
        intensity_sample=pooled(intensities),
    )
