"""Summary statistics and clicks per image and structure, validated, with history.

Stored in image info under ``emlabel.stats``: per structure the current value, its source,
user and time, and every earlier value (never dropped), plus clicked voxels inside and
outside the structure (voxel indices of the image file). CSV import is all-or-nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from emlabel.errors import InvalidRequestError
from emlabel.labels.provenance import now_iso

INFO_KEY = "emlabel.stats"
STATISTICS = {"volume_mm3": 3, "area_mm2": 2}
"""Statistic name -> number of spatial dimensions of the images it applies to."""


@dataclasses.dataclass(frozen=True)
class StatisticEntry:
    """One statistic (and optional clicks) for one image and structure."""

    image_id: str
    structure: str
    statistic: str | None
    value: float | None
    clicks_inside: tuple[tuple[int, ...], ...] = ()
    clicks_outside: tuple[tuple[int, ...], ...] = ()


def parse_entry(
    raw: Mapping[str, Any],
    *,
    image_id: str,
    label_map: Mapping[str, int],
    image_shape: Sequence[int],
) -> StatisticEntry:
    """Validate one statistic/clicks record; raises InvalidRequestError with the reason."""
    structure = raw.get("structure")
    if structure not in label_map:
        raise InvalidRequestError(f"unknown structure {structure!r}; valid: {', '.join(label_map)}")
    statistic, value = raw.get("statistic"), raw.get("value")
    ndim = len(image_shape)
    if statistic is not None or value is not None:
        if statistic not in STATISTICS:
            raise InvalidRequestError(
                f"unknown statistic {statistic!r}; valid: {', '.join(STATISTICS)}"
            )
        if STATISTICS[statistic] != ndim:
            raise InvalidRequestError(f"{statistic} does not apply to a {ndim}D image")
        try:
            value = float(value)
        except (TypeError, ValueError) as e:
            raise InvalidRequestError(f"value {value!r} is not a number") from e
        if not math.isfinite(value) or value <= 0:
            raise InvalidRequestError(f"value {value} must be a positive finite number")
    inside = _clicks(raw.get("clicks_inside", ()), image_shape, "clicks_inside")
    outside = _clicks(raw.get("clicks_outside", ()), image_shape, "clicks_outside")
    if statistic is None and not inside and not outside:
        raise InvalidRequestError("give a statistic and value, or clicks, or both")
    return StatisticEntry(image_id, structure, statistic, value, inside, outside)


def _clicks(raw: Any, shape: Sequence[int], field: str) -> tuple[tuple[int, ...], ...]:
    points = []
    for point in raw or ():
        if (
            not isinstance(point, list | tuple)
            or len(point) != len(shape)
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in point)
        ):
            raise InvalidRequestError(
                f"{field}: {point!r} is not a voxel index of {len(shape)} integers"
            )
        if any(c < 0 or c >= n for c, n in zip(point, shape, strict=True)):
            raise InvalidRequestError(f"{field}: {list(point)} is outside the image {list(shape)}")
        points.append(tuple(point))
    return tuple(points)


def merged_info(
    current: Mapping[str, Any] | None, entry: StatisticEntry, *, source: str, user: str | None
) -> dict[str, Any]:
    """The ``emlabel.stats`` info after adding ``entry`` (earlier values kept in history)."""
    info = {"structures": dict((current or {}).get("structures", {}))}
    record = dict(info["structures"].get(entry.structure, {}))
    history = list(record.get("history", []))
    stamp = {"source": source, "user": user, "time": now_iso()}
    if entry.statistic is not None:
        if record.get("statistic") is not None:
            history.append(
                {k: record.get(k) for k in ("statistic", "value", "source", "user", "time")}
            )
        record.update({"statistic": entry.statistic, "value": entry.value} | stamp)
    if entry.clicks_inside or entry.clicks_outside:
        if record.get("clicks_inside") or record.get("clicks_outside"):
            history.append(
                {k: record.get(k) for k in ("clicks_inside", "clicks_outside")}
                | {"time": record.get("clicks_time")}
            )
        record.update(
            {
                "clicks_inside": [list(p) for p in entry.clicks_inside],
                "clicks_outside": [list(p) for p in entry.clicks_outside],
                "clicks_time": stamp["time"],
            }
        )
    record["history"] = history
    info["structures"][entry.structure] = record
    return info


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an ``image,structure,statistic,value`` CSV (header required)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"image", "structure", "statistic", "value"} - set(reader.fieldnames or ())
        if missing:
            raise InvalidRequestError(f"{path}: missing column(s) {sorted(missing)}")
        return [dict(row) for row in reader]


def validate_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    image_shapes: Mapping[str, Sequence[int]],
    label_map: Mapping[str, int],
) -> list[StatisticEntry]:
    """Every row checked; all problems reported at once (line numbers count the header)."""
    entries, problems = [], []
    for line, row in enumerate(rows, start=2):
        image_id = (row.get("image") or "").strip()
        if image_id not in image_shapes:
            problems.append(f"line {line}: unknown image {image_id!r}")
            continue
        try:
            entries.append(
                parse_entry(
                    {
                        "structure": (row.get("structure") or "").strip(),
                        "statistic": (row.get("statistic") or "").strip(),
                        "value": row.get("value"),
                    },
                    image_id=image_id,
                    label_map=label_map,
                    image_shape=image_shapes[image_id],
                )
            )
        except InvalidRequestError as e:
            problems.append(f"line {line}: {e.message}")
    if problems:
        raise InvalidRequestError("nothing imported; fix these first:\n  " + "\n  ".join(problems))
    if not entries:
        raise InvalidRequestError("nothing to import: the CSV has no rows")
    return entries
