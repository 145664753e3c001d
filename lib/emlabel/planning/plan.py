"""Turn a :class:`Fingerprint` into app settings, like nnU-Net's experiment planning.

:func:`make_plan` derives dimensionality, channels, spacing, intensity normalisation,
patch size, network depth and the label map from the data; :class:`Plan` keeps them with
readable notes on what was assumed, and ``Plan.settings_values()`` gives the
:class:`~emlabel.settings.AppSettings` values. ``emlabel plan`` writes the plan to
``<studies>/.emlabel-plan.json`` (:data:`PLAN_FILE`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from emlabel.atomic import atomic_write_json
from emlabel.data.label_values import MASK_THRESHOLD
from emlabel.errors import SettingsError
from emlabel.planning.fingerprint import Fingerprint, ImageRecord, fingerprint_studies

PLAN_FILE = ".emlabel-plan.json"
"""The plan's file name in the studies folder."""
PLAN_FORMAT = 1
CT_AIR = -500.0
"""Intensities at or below this are air in Hounsfield units: a 3D image reaching it is CT."""
NETWORK_CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 256)
MIN_LEVELS, MAX_LEVELS = 2, 5
MIN_PATCH_AXIS = 16
BOTTOM_AXIS = 8
"""Smallest patch axis at the network's lowest resolution."""
DEFAULT_PATCH_VOXELS = {2: 256**2, 3: 64**3}
_SETTING_FIELDS = (
    "spatial_dims", "modality", "in_channels", "target_spacing", "normalisation",
    "intensity_window", "intensity_stats", "roi_size", "network_channels", "labels",
    "label_values",
)  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """Settings derived from a studies folder, and what they were derived from."""

    spatial_dims: int
    modality: str
    in_channels: int
    target_spacing: tuple[float, ...]
    normalisation: str
    intensity_window: tuple[float, ...]
    intensity_stats: tuple[float, ...]
    roi_size: tuple[int, ...]
    network_channels: tuple[int, ...]
    labels: tuple[str, ...]
    """Structure names; empty when no labels were found (the ``labels`` setting decides)."""
    label_values: tuple[int, ...]
    """Stored value of each structure (same order); empty for a one-structure 0..255 mask."""
    median_shape: tuple[int, ...]
    """Per-axis median image shape, in voxels as stored."""
    images: int
    """Images read."""
    labeled: int
    """Images read with a label."""
    notes: tuple[str, ...] = ()

    def settings_values(self) -> dict[str, Any]:
        """The :class:`~emlabel.settings.AppSettings` values of this plan (JSON-able).

        ``labels`` only when labels were found; ``label_values`` only when they are not
        1, 2, ..., K.
        """
        values: dict[str, Any] = {
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "modality": self.modality,
            "normalisation": self.normalisation,
            "intensity_window": list(self.intensity_window),
            "intensity_stats": list(self.intensity_stats),
            "target_spacing": list(self.target_spacing),
            "roi_size": list(self.roi_size),
            "network_channels": list(self.network_channels),
        }
        if self.labels:
            values["labels"] = list(self.labels)
            if self.label_values and self.label_values != tuple(range(1, len(self.labels) + 1)):
                values["label_values"] = list(self.label_values)
        return values

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the plan's fields, plus ``format`` and ``settings`` for readers)."""
        fields = {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }
        return {"format": PLAN_FORMAT, **fields, "settings": self.settings_values()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """The plan :meth:`to_dict` gave; :class:`SettingsError` naming a bad field."""
        if not isinstance(data, dict):
            raise SettingsError("a plan must be a JSON object")
        if data.get("format", PLAN_FORMAT) != PLAN_FORMAT:
            raise SettingsError(f"plan format {data.get('format')!r} is not {PLAN_FORMAT}")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in data:
                if field.default is dataclasses.MISSING:
                    raise SettingsError(f"plan field '{field.name}' is missing")
                continue
            kwargs[field.name] = _convert(field.name, data[field.name], hints[field.name])
        plan = cls(**kwargs)
        from emlabel.settings import parse_settings

        try:
            parse_settings(plan.settings_values())
        except SettingsError as e:
            raise SettingsError(f"plan: {e.message}") from e
        return plan


def _convert(name: str, raw: Any, hint: Any) -> Any:
    kind = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
    items = raw if typing.get_origin(hint) is tuple else [raw]
    if not isinstance(items, list | tuple):
        raise SettingsError(f"plan field '{name}' must be a list, not {raw!r}")
    out = []
    for item in items:
        ok = (
            isinstance(item, str)
            if kind is str
            else isinstance(item, int | float) and not isinstance(item, bool)
        )
        if not ok or (kind is int and float(item) != int(item)):
            raise SettingsError(f"plan field '{name}' has a bad value {raw!r}")
        out.append(kind(item))
    return tuple(out) if typing.get_origin(hint) is tuple else out[0]


def make_plan(fp: Fingerprint, *, patch_voxels: int | None = None) -> Plan:
    """Settings from a fingerprint. Rules (``fp`` images of the planned dimensionality):

    - ``spatial_dims``: the most common number of spatial axes (after EnsureChannelFirst).
    - ``modality``: dataset.json's ``channel_names["0"]``; else 3D reaching <= -500 (air in
      HU) is ``CT``, other 3D ``MR``, 2D ``OT``.
    - ``in_channels``: 3 when a 2D image has >= 3 unequal colour channels, else 1.
    - ``target_spacing``: per-axis median spacing.
    - ``normalisation``: CT -> ``ct`` with ``intensity_window`` = foreground's 0.5 / 99.5
      percentiles and ``intensity_stats`` = (mean, std) of the foreground clipped to it
      (nnU-Net's CTNormalization; without labels, intensities > -500 stand in); else
      ``zscore`` with the window = observed (min, max).
    - ``roi_size``: ``s`` = median over images of shape * spacing / target_spacing; while
      prod(s) > budget (``patch_voxels``, default 64**3 in 3D, 256**2 in 2D) the largest
      axis shrinks to round(0.9 * axis); every axis >= 16; then levels =
      clamp(1 + floor(log2(min(s) / 8)), 2, 5) (the bottom keeps >= 8 voxels) and each axis
      is rounded down to a multiple of 2**(levels - 1).
    - ``network_channels``: (16, 32, 64, 128, 256)[:levels].
    - labels: dataset.json's structures by value; else one ``foreground`` when every label
      is an 8-bit picture reaching >= 128 (a 0..255 mask, read thresholded at 128); else
      ``label_<v>`` per foreground value found, with those values.
    """
    notes = list(fp.notes)
    dims_count = Counter(r.spatial_dims for r in fp.images)
    if not dims_count:
        raise SettingsError(f"{fp.studies}: no images were read; nothing to plan")
    spatial_dims = max(dims_count, key=lambda d: (dims_count[d], d))
    if spatial_dims not in (2, 3):
        raise SettingsError(f"{fp.studies}: images have {spatial_dims} spatial axes (not 2 or 3)")
    records = [r for r in fp.images if r.spatial_dims == spatial_dims]
    if len(records) < len(fp.images):
        notes.append(
            f"{len(fp.images) - len(records)} images with another number of spatial axes "
            f"were left out (planned for {spatial_dims}D)"
        )
    budget = DEFAULT_PATCH_VOXELS[spatial_dims] if patch_voxels is None else patch_voxels
    if budget < MIN_PATCH_AXIS**spatial_dims:
        raise SettingsError(
            f"patch_voxels must be at least {MIN_PATCH_AXIS**spatial_dims} "
            f"({MIN_PATCH_AXIS}**{spatial_dims}), not {budget}"
        )

    modality = _modality(fp, records, spatial_dims, notes)
    in_channels = _in_channels(records, spatial_dims, notes)
    target = tuple(
        float(round(float(np.median([r.spacing[a] for r in records])), 4))
        for a in range(spatial_dims)
    )
    normalisation, window, stats = _normalisation(fp, records, modality, notes)
    roi_size, levels = plan_patch(records, target, budget)
    labels, label_values = _labels(fp, notes)
    median_shape = tuple(
        round(float(np.median([r.spatial_shape[a] for r in records]))) for a in range(spatial_dims)
    )
    return Plan(
        spatial_dims=spatial_dims,
        modality=modality,
        in_channels=in_channels,
        target_spacing=target,
        normalisation=normalisation,
        intensity_window=window,
        intensity_stats=stats,
        roi_size=roi_size,
        network_channels=NETWORK_CHANNELS[:levels],
        labels=labels,
        label_values=label_values,
        median_shape=median_shape,
        images=len(records),
        labeled=sum(r.label_file is not None for r in records),
        notes=tuple(notes),
    )


def _modality(
    fp: Fingerprint, records: list[ImageRecord], spatial_dims: int, notes: list[str]
) -> str:
    if fp.dataset_modality:
        return fp.dataset_modality
    if spatial_dims == 2:
        modality = "OT"
    else:
        modality = "CT" if min(r.min for r in records) <= CT_AIR else "MR"
    notes.append(
        f"modality {modality} guessed from the intensities (no dataset.json channel_names)"
    )
    return modality


def _in_channels(records: list[ImageRecord], spatial_dims: int, notes: list[str]) -> int:
    colour = [r for r in records if r.channels >= 3 and not r.equal_channels]
    if spatial_dims == 2 and colour:
        return 3
    if any(r.channels > 1 for r in records):
        notes.append("multi-channel images with equal (or 3D) channels are read as their mean")
    return 1


def _normalisation(
    fp: Fingerprint, records: list[ImageRecord], modality: str, notes: list[str]
) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    if modality.upper() == "CT":
        sample = fp.foreground_sample
        if sample.size == 0:
            sample = fp.intensity_sample[fp.intensity_sample > CT_AIR]
            notes.append(f"no labeled foreground: CT window from intensities > {CT_AIR:g}")
        if sample.size == 0:
            sample = fp.intensity_sample
        lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
        hi = hi if hi > lo else lo + 1.0
        clipped = np.clip(sample.astype(np.float64), lo, hi)
        mean, std = float(clipped.mean()), float(clipped.std())
        if std <= 0:
            std = 1.0
            notes.append("the CT foreground is constant: std set to 1")
        return "ct", (_round(lo), _round(hi)), (_round(mean), _round(std))
    lo, hi = min(r.min for r in records), max(r.max for r in records)
    return "zscore", (_round(lo), _round(hi if hi > lo else lo + 1.0)), ()


def _round(value: float) -> float:
    return float(round(value, 4))


def plan_patch(
    records: list[ImageRecord], target: tuple[float, ...], budget: int
) -> tuple[tuple[int, ...], int]:
    """(roi_size, levels) for images resampled to ``target`` (rules: :func:`make_plan`)."""
    dims = len(target)
    resampled = [
        [r.spatial_shape[a] * r.spacing[a] / target[a] for a in range(dims)] for r in records
    ]
    patch = [max(1, round(float(np.median([s[a] for s in resampled])))) for a in range(dims)]
    while math.prod(patch) > budget:
        axis = int(np.argmax(patch))
        patch[axis] = max(1, min(patch[axis] - 1, round(0.9 * patch[axis])))
    patch = [max(MIN_PATCH_AXIS, p) for p in patch]
    halvings = math.floor(math.log2(min(patch) / BOTTOM_AXIS))
    levels = min(MAX_LEVELS, max(MIN_LEVELS, 1 + halvings))
    multiple = 2 ** (levels - 1)
    return tuple(max(MIN_PATCH_AXIS, p // multiple * multiple) for p in patch), levels


def _labels(fp: Fingerprint, notes: list[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    found = tuple(v for v in fp.label_values if v > 0)
    if fp.dataset_labels:
        names = tuple(name for name, _ in fp.dataset_labels)
        values = tuple(value for _, value in fp.dataset_labels)
        if extra := sorted(set(found) - set(values)):
            notes.append(f"label values {extra} are not in dataset.json: read as background")
        return names, values
    labeled = [r for r in fp.images if r.label_file is not None]
    if not labeled:
        notes.append("no labels found: structures come from the `labels` setting")
        return (), ()
    if not found:
        notes.append("the labels hold only background: structures come from the `labels` setting")
        return (), ()
    if all(r.label_is_8bit_picture for r in labeled) and max(found) >= MASK_THRESHOLD:
        notes.append(
            f"8-bit picture labels up to {max(found)}: one structure 'foreground', read as "
            f"0..255 masks (>= {MASK_THRESHOLD})"
        )
        return ("foreground",), ()
    notes.append("structure names label_<value> (no dataset.json labels)")
    return tuple(f"label_{v}" for v in found), found


def plan_studies(
    studies: Path, *, max_images: int = 64, seed: int = 0, patch_voxels: int | None = None
) -> Plan:
    """Fingerprint ``studies`` and plan from it."""
    fp = fingerprint_studies(studies, max_images=max_images, seed=seed)
    return make_plan(fp, patch_voxels=patch_voxels)


def write_plan(plan: Plan, path: Path) -> Path:
    """Write ``plan`` as JSON onto ``path`` atomically; returns ``path``."""
    atomic_write_json(plan.to_dict(), path)
    return Path(path)


def read_plan(path: Path) -> Plan:
    """The plan in ``path``; :class:`SettingsError` when missing or broken."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SettingsError(f"plan file {path} not found (run `emlabel plan`)") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SettingsError(f"plan file {path} is not valid JSON: {e}") from e
    try:
        return Plan.from_dict(data)
    except SettingsError as e:
        raise SettingsError(f"plan file {path}: {e.message}") from e


def format_plan(plan: Plan) -> str:
    """A short human-readable table of the plan and its notes."""

    def show(value: Any) -> str:
        if isinstance(value, tuple):
            return ", ".join(str(v) for v in value) if value else "-"
        return str(value)

    rows = [
        ("images", f"{plan.images} read, {plan.labeled} labeled"),
        ("median shape", show(plan.median_shape)),
        *((name, show(getattr(plan, name))) for name in _SETTING_FIELDS),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += ["notes:", *(f"  - {n}" for n in plan.notes)] if plan.notes else []
    return "\n".join(lines)
