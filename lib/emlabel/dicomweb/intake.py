"""DICOM-SEGs on the server that EMLabel did not take in, and why (kept across processes).

In DICOMweb mode another viewer (OHIF's segmentation mode, 3D Slicer, a script) may store a
SEG that cannot become a label: an unknown segment name, nothing painted, a SEG that does
not lie on its image's grid. It is not taken in, and it is recorded here, in one JSON file in
the datastore cache, so the review page shows it to the annotator who saved it; the sync runs
in every MONAI Label process (server, training, scoring), so a record in memory would be
lost. A SEG is judged once: a record is never retried (a corrected SEG is a new series).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from emlabel.atomic import atomic_write_json
from emlabel.labels.provenance import now_iso

logger = logging.getLogger(__name__)

PROBLEMS_FILE = ".emlabel-seg-problems.json"
"""The record's name in the datastore cache folder."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegProblem:
    """One SEG that was not taken in."""

    seg_series_uid: str
    image_id: str
    """The image series the SEG references."""
    study_uid: str
    reason: str
    time: str = dataclasses.field(default_factory=now_iso)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_problems(path: Path) -> dict[str, SegProblem]:
    """The recorded problems by SEG series UID (none when the file is missing or unreadable)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {uid: SegProblem(**entry) for uid, entry in raw.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError) as e:  # a damaged record is logged, not fatal
        logger.warning("SEG problem record %s is unreadable (%s); starting a new one", path, e)
        return {}


def record_problem(path: Path, problem: SegProblem) -> dict[str, SegProblem]:
    """Add ``problem`` to the record (atomic rewrite; the caller holds the sync lock)."""
    problems = load_problems(path) | {problem.seg_series_uid: problem}
    atomic_write_json({uid: p.to_dict() for uid, p in problems.items()}, path)
    return problems
