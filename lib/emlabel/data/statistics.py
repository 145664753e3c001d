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


ENTRY_FIELDS: tuple[str, ...] = (
    "structure",
    "statistic",
    "value",
    "clicks_inside",
    "clicks_outside",
)
"""Keys of one statistic/clicks record (the body of ``PUT /emlabel/stats``)."""
MAX_CLICKS = 10_000
"""Most clicked voxels in one list (inside or outside): clicks are a few points, not a mask."""


def parse_entry(
    raw: Mapping[str, Any],
    *,
    image_id: str,
    label_map: Mapping[str, int],
    image_shape: Sequence[int],
) -> StatisticEntry:
    """Validate one statistic/clicks record; raises InvalidRequestError with the reason.

    Every field's type is checked before it is used (a list as ``structure`` is a 400,
    not an unhashable-type 500): ``structure`` a known name, ``statistic`` a known name or
    null, ``value`` a positive finite number (or a numeric string, as CSV cells are),
    clicks lists of voxel indices. Unknown keys are refused (a typo would lose the data).
    """
    if not isinstance(raw, Mapping):
        raise InvalidRequestError(f"a statistic record must be an object, not {_kind(raw)}")
    unknown = sorted(str(k) for k in raw if k not in ENTRY_FIELDS)
    if unknown:
        raise InvalidRequestError(f"unknown field(s) {unknown}; valid: {', '.join(ENTRY_FIELDS)}")
    structure = raw.get("structure")
    if not isinstance(structure, str):
        raise InvalidRequestError(
            f"structure must be a string naming a structure, not {_kind(structure)}; "
            f"valid: {', '.join(label_map)}"
        )
    if structure not in label_map:
        raise InvalidRequestError(
            f"unknown structure {_short(structure)}; valid: {', '.join(label_map)}"
        )
    statistic, value = raw.get("statistic"), raw.get("value")
    if statistic is not None and not isinstance(statistic, str):
        raise InvalidRequestError(
            f"statistic must be a string or null, not {_kind(statistic)}; "
            f"valid: {', '.join(STATISTICS)}"
        )
    ndim = len(image_shape)
    if statistic is not None or value is not None:
        if statistic not in STATISTICS:
            raise InvalidRequestError(
                f"unknown statistic {_short(statistic)}; valid: {', '.join(STATISTICS)}"
            )
        if STATISTICS[statistic] != ndim:
            raise InvalidRequestError(f"{statistic} does not apply to a {ndim}D image")
        value = _number(value)
        if not math.isfinite(value) or value <= 0:
            raise InvalidRequestError(f"value {value} must be a positive finite number")
    inside = _clicks(raw.get("clicks_inside"), image_shape, "clicks_inside")
    outside = _clicks(raw.get("clicks_outside"), image_shape, "clicks_outside")
    if statistic is None and not inside and not outside:
        raise InvalidRequestError("give a statistic and value, or clicks, or both")
    return StatisticEntry(image_id, structure, statistic, value, inside, outside)


def _kind(value: Any) -> str:
    """``a list ['liver']``: a value's JSON type and a short repr, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, int | float):
        kind = "a number"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, Mapping):
        kind = "an object"
    elif isinstance(value, list | tuple):
        kind = "a list"
    else:
        kind = f"a {type(value).__name__}"
    return f"{kind} {_short(value)}"


def _short(value: Any) -> str:
    """``repr(value)``, cut to 40 characters (a message must not echo a huge body)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: Any) -> float:
    """A statistic's value as a float: a JSON number or a numeric string (CSV), not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequestError(f"value {_short(value)} is not a number")
    try:
        return float(value)
    except (OverflowError, ValueError) as e:
        raise InvalidRequestError(f"value {_short(value)} is not a number") from e


def _clicks(raw: Any, shape: Sequence[int], field: str) -> tuple[tuple[int, ...], ...]:
    """Voxel indices inside the image: a list (or null) of lists of ``len(shape)`` ints."""
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise InvalidRequestError(
            f"{field} must be a list of voxel indices like [[x, y, z]], not {_kind(raw)}"
        )
    if len(raw) > MAX_CLICKS:
        raise InvalidRequestError(f"{field} has {len(raw)} clicks; at most {MAX_CLICKS}")
    points = []
    for point in raw:
        if (
            not isinstance(point, list | tuple)
            or len(point) != len(shape)
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in point)
        ):
            raise InvalidRequestError(
                f"{field}: {_short(point)} is not a voxel index of {len(shape)} integers"
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
