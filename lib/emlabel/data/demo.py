"""Write a MONAI Label studies folder of synthetic phantoms: the EMLabel demo.

Layout (case ids ``case_000`` ...)::

    out/case_XXX.nii.gz                      image, int16 HU
    out/labels/final/case_XXX.nii.gz         clean "expert" label, first n_final cases
    out/emlabel_demo/noisy/case_XXX.nii.gz   corrupted label, the next cases (imported elsewhere)
    out/emlabel_demo/truth/case_XXX.nii.gz   clean truth, every case
    out/emlabel_demo/manifest.json           what was written (also returned)

The last ``n_unlabeled`` cases get no label at all. Every file is written atomically (to a
temporary name in its folder, then renamed) and gzip'ed without a timestamp, so the same seed
gives byte-identical files. A marker file makes an interrupted run recognisable as a demo, so
writing again over it (or over any earlier demo) is allowed; any other non-empty folder is
refused.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from emlabel.atomic import atomic_path, atomic_write_json
from emlabel.data.corruptions import corrupt_label
from emlabel.data.phantoms import HU_MAX, HU_MIN, PHANTOM_LABELS, PhantomOptions, make_phantom
from emlabel.metrics import dice

DEMO_DIR = "emlabel_demo"
MANIFEST = f"{DEMO_DIR}/manifest.json"
IN_PROGRESS = f"{DEMO_DIR}/.writing.json"  # present while a run is writing
ROLES: tuple[str, ...] = ("final", "noisy", "unlabeled")
_CASE_ID = re.compile(r"^case_\d{3,}$")
_SEED_STREAMS = {"phantom": 0, "corruption": 1}


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """How many cases of which role, and how they are generated."""

    n: int = 8
    """Number of cases (images)."""
    seed: int = 0
    """Seed of the whole demo; the same seed gives the same files."""
    n_final: int = 2
    """The first cases, with a clean label in ``labels/final`` (the expert labels)."""
    n_unlabeled: int = 2
    """The last cases, with no label at all; the cases in between get a noisy label."""
    phantom: PhantomOptions = field(default_factory=PhantomOptions)
    """Shape, spacing and image quality of every phantom."""

    def __post_init__(self) -> None:
        for name, low in (("n", 1), ("seed", 0), ("n_final", 0), ("n_unlabeled", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.n < self.n_final + self.n_unlabeled:
            raise ValueError(
                f"n ({self.n}) must be >= n_final + n_unlabeled "
                f"({self.n_final} + {self.n_unlabeled})"
            )
        if not isinstance(self.phantom, PhantomOptions):
            raise ValueError(f"phantom must be PhantomOptions, got {type(self.phantom).__name__}")


def case_id(index: int) -> str:
    """``case_000``, ``case_001``, ..."""
    return f"case_{index:03d}"


def role_of(index: int, options: DemoOptions) -> str:
    """final for the first ``n_final`` cases, unlabeled for the last ``n_unlabeled``."""
    if index < options.n_final:
        return "final"
    if index >= options.n - options.n_unlabeled:
        return "unlabeled"
    return "noisy"


def case_paths(cid: str) -> dict[str, str]:
    """Paths (relative to the studies folder) of every file a case may have."""
    name = f"{cid}.nii.gz"
    return {
        "image": name,
        "final": f"labels/final/{name}",
        "noisy": f"{DEMO_DIR}/noisy/{name}",
        "truth": f"{DEMO_DIR}/truth/{name}",
    }


def write_demo_studies(out: Path, options: DemoOptions = DemoOptions()) -> dict:
    """Write the demo studies folder ``out``; returns the manifest (also saved as JSON)."""
    if not isinstance(options, DemoOptions):
        raise ValueError(f"options must be DemoOptions, got {type(options).__name__}")
    out = Path(out)
    earlier = _earlier_cases(out)
    ids = [case_id(i) for i in range(options.n)]
    atomic_write_json({"cases": sorted(set(ids) | earlier)}, out / IN_PROGRESS)
    cases = {ids[i]: _write_case(out, i, options) for i in range(options.n)}
    _remove_stale(out, earlier, cases)
    manifest = {
        "seed": options.seed,
        "n": options.n,
        "labels": {name: value for value, name in enumerate(PHANTOM_LABELS)},
        "spacing": [float(s) for s in options.phantom.spacing],
        "shape": [int(s) for s in options.phantom.shape],
        "cases": cases,
    }
    atomic_write_json(manifest, out / MANIFEST)
    (out / IN_PROGRESS).unlink()
    return manifest


def _earlier_cases(out: Path) -> set[str]:
    """Case ids of an earlier demo in ``out``; ValueError if ``out`` holds something else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return set()
    found = [out / MANIFEST, out / IN_PROGRESS]
    if not any(p.is_file() for p in found):
        raise ValueError(
            f"out {out} is not empty and holds no earlier demo ({MANIFEST}); "
            "give an empty or new folder"
        )
    ids: set[str] = set()
    for path in found:
        if path.is_file():
            try:
                ids |= set(json.loads(path.read_text())["cases"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"out {out}: unreadable demo file {path.name} ({e})") from e
    return {cid for cid in ids if isinstance(cid, str) and _CASE_ID.match(cid)}


def _seed(options: DemoOptions, index: int, stream: str) -> int:
    """Independent, reproducible seed per (demo seed, case, purpose)."""
    sequence = np.random.SeedSequence([options.seed, index, _SEED_STREAMS[stream]])
    return int(sequence.generate_state(1)[0])


def _write_case(out: Path, index: int, options: DemoOptions) -> dict[str, Any]:
    """Write one case's files; returns its manifest entry."""
    cid, role = case_id(index), role_of(index, options)
    paths = case_paths(cid)
    phantom = make_phantom(seed=_seed(options, index, "phantom"), options=options.phantom)
    affine = phantom.affine
    image = np.clip(np.rint(phantom.image), HU_MIN, HU_MAX).astype(np.int16)
    _write_nifti(out / paths["image"], image, affine)
    _write_nifti(out / paths["truth"], phantom.label, affine)
    if role == "final":
        _write_nifti(out / paths["final"], phantom.label, affine)
    records: list[dict[str, Any]] = []
    scores: dict[str, float] = {}
    if role == "noisy":
        rng = np.random.default_rng(_seed(options, index, "corruption"))
        noisy, records = corrupt_label(phantom.label, rng=rng, spacing=phantom.spacing)
        _write_nifti(out / paths["noisy"], noisy, affine)
        scores = _dice_per_structure(noisy, phantom.label)
    return {
        "role": role,
        "image": paths["image"],
        "label": paths["final"] if role == "final" else None,
        "truth": paths["truth"],
        "noisy": paths["noisy"] if role == "noisy" else None,
        "corruptions": records,
        "dice_noisy_vs_truth": scores,
        "voxel_counts": _voxel_counts(phantom.label),
    }


def _dice_per_structure(noisy: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {
        name: float(dice(noisy == value, truth == value))
        for value, name in enumerate(PHANTOM_LABELS)
        if value
    }


def _voxel_counts(label: np.ndarray) -> dict[str, int]:
    counts = np.bincount(label.ravel(), minlength=len(PHANTOM_LABELS))
    return {name: int(counts[value]) for value, name in enumerate(PHANTOM_LABELS) if value}


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A .nii.gz file's bytes: qform and sform set to ``affine`` (mm), no gzip timestamp."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write atomically: a reader or a crash never sees a half-written file."""
    data = nifti_bytes(array, affine)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _remove_stale(out: Path, earlier: set[str], cases: dict[str, dict[str, Any]]) -> None:
    """Delete files an earlier demo wrote that this one did not (fewer cases, other roles)."""
    written = {case[key] for case in cases.values() for key in ("image", "label", "truth", "noisy")}
    for cid in sorted(earlier):
        for rel in case_paths(cid).values():
            if rel not in written:
                (out / rel).unlink(missing_ok=True)
