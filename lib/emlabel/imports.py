"""Bulk import of labels into the versioned datastore (all-or-nothing)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from emlabel.errors import EMLabelError, InvalidRequestError

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".png", ".tif", ".tiff")
"""Label files: volumes (NIfTI, NRRD) and 2D pictures (PNG, TIFF)."""


@dataclasses.dataclass(frozen=True)
class ImportPlan:
    """Which file becomes a label of which image."""

    image_id: str
    path: Path


def image_id_of(path: Path) -> str:
    """``case_001.nii.gz`` -> ``case_001``."""
    for suffix in LABEL_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    raise InvalidRequestError(f"{path}: not a label file ({', '.join(LABEL_SUFFIXES)})")


def plan_import(paths: Iterable[str | Path]) -> list[ImportPlan]:
    """Expand folders and map every file to its image id."""
    plans: list[ImportPlan] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.name.endswith(LABEL_SUFFIXES))
        elif path.is_file():
            files = [path]
        else:
            raise InvalidRequestError(f"{path}: no such file or folder")
        plans.extend(ImportPlan(image_id=image_id_of(f), path=f) for f in files)
    if not plans:
        raise InvalidRequestError("nothing to import: no label files found")
    return plans


def import_labels(datastore, plans: list[ImportPlan], *, tag: str, user: str | None = None) -> list:
    """Validate every label first; store them only if all are valid.

    ``datastore`` is an :class:`emlabel.monailabel.datastore.VersionedDatastore`.
    Returns the stored :class:`~emlabel.labels.LabelVersion` objects.
    """
    problems = []
    for plan in plans:
        try:
            datastore.check_label_file(plan.image_id, str(plan.path), tag)
        except EMLabelError as e:
            problems.append(f"{plan.path.name}: {e.message}")
    if problems:
        raise InvalidRequestError("nothing imported; fix these first:\n  " + "\n  ".join(problems))
    return [
        datastore.store_label(plan.image_id, str(plan.path), tag, {}, user=user) for plan in plans
    ]
