"""How close a studies folder's labels are to the demo's truth (demo tooling, not the app).

The synthetic demo writes its clean truth beside the studies (``emlabel_demo/``); this
reads the manifest and scores label files against it. The app never reads it: a user's
studies have no truth. Used by ``emlabel demo-quality`` and the tests.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from emlabel.metrics import dice

MANIFEST = Path("emlabel_demo") / "manifest.json"


@dataclasses.dataclass(frozen=True)
class DemoTruth:
    """The demo's manifest (``cases``: image id -> ``truth`` file, relative to the studies)."""

    studies: Path
    manifest: dict[str, Any]

    @classmethod
    def find(cls, studies: str | Path) -> DemoTruth | None:
        path = Path(studies) / MANIFEST
        if not path.exists():
            return None
        return cls(Path(studies), json.loads(path.read_text(encoding="utf-8")))

    def quality(self, labels: Mapping[str, str]) -> float | None:
        """Mean over ``labels`` (image id -> file) of the mean per-structure Dice to truth."""
        scores = []
        for image_id, case in self.manifest.get("cases", {}).items():
            path = labels.get(image_id)
            if not path or not case.get("truth"):
                continue
            label, truth = _read(path), _read(str(self.studies / case["truth"]))
            values = [v for v in np.union1d(np.unique(label), np.unique(truth)) if v]
            if values:
                scores.append(float(np.mean([dice(label == v, truth == v) for v in values])))
        return round(float(np.mean(scores)), 6) if scores else None


def _read(path: str) -> np.ndarray:
    """A label file's stored values (NIfTI through nibabel, pictures through PIL)."""
    if path.lower().endswith((".png", ".tif", ".tiff")):
        from PIL import Image

        with Image.open(path) as picture:
            return np.asarray(picture).astype(np.int64)
    return np.asarray(nib.load(path).dataobj).astype(np.int64)
