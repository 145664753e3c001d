"""Write a MONAI Label studies folder of synthetic cases: the EMLabel demo.

Two kinds: ``phantom`` (3D CT-like volumes, ``.nii.gz``, :mod:`emlabel.data.phantoms`) and
``xray`` (2D chest-X-ray-like pictures, ``.png``, :mod:`emlabel.data.xray`). Layout (case ids
``case_000`` ...; ``EXT`` is ``.nii.gz`` or ``.png``)::

    out/case_XXX.EXT                         image (int16 HU, or uint8 grey)
    out/labels/final/case_XXX.EXT            clean "expert" label, first n_final cases
    out/emlabel_demo/noisy/case_XXX.EXT      corrupted label, the next cases (imported elsewhere)
    out/emlabel_demo/truth/case_XXX.EXT      clean truth, every case
    out/emlabel_demo/manifest.json           what was written (also returned)
    out/dataset.json                         nnU-Net v2 style: structure names, channel names

The last ``n_unlabeled`` cases get no label at all. Every file is written atomically (to a
temporary name in its folder, then renamed); NIfTI is gzip'ed without a timestamp and PNG
has no time chunk, so the same seed gives byte-identical files. A marker file makes an
interrupted run recognisable as a demo, so writing again over it (or over any earlier demo,
of either kind) is allowed; any other non-empty folder is refused.
"""

from __future__ import annotations

import gzip
import io
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
from emlabel.data.xray import (
    PIXEL_SPACING,
    XRAY_LABELS,
    XRayOptions,
    corrupt_xray_label,
    make_xray,
)
from emlabel.metrics import dice

DEMO_DIR = "emlabel_demo"
MANIFEST = f"{DEMO_DIR}/manifest.json"
IN_PROGRESS = f"{DEMO_DIR}/.writing.json"  # present while a run is writing
DATASET_JSON = "dataset.json"
ROLES: tuple[str, ...] = ("final", "noisy", "unlabeled")
KINDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "phantom": (".nii.gz", "CT", PHANTOM_LABELS),
    "xray": (".png", "XR", XRAY_LABELS),
}
"""Kind -> (file suffix, modality of ``dataset.json``'s channel 0, label names by value)."""
_CASE_ID = re.compile(r"^case_\d{3,}$")
_SEED_STREAMS = {"phantom": 0, "corruption": 1}


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """How many cases of which role, and how they are generated."""

    kind: str = "phantom"
    """``phantom`` (3D CT-like volumes) or ``xray`` (2D chest X-ray-like pictures)."""
    n: int = 8
    """Number of cases (images)."""
    seed: int = 0
    """Seed of the whole demo; the same seed gives the same files."""
    n_final: int = 2
    """The first cases, with a clean label in ``labels/final`` (the expert labels)."""
    n_unlabeled: int = 2
    """The last cases, with no label at all; the cases in between get a noisy label."""
    phantom: PhantomOptions = field(default_factory=PhantomOptions)
    """Shape, spacing and image quality of every phantom (kind ``phantom``)."""
    xray: XRayOptions = field(default_factory=XRayOptions)
    """Shape and image quality of every X-ray (kind ``xray``)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
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
        if not isinstance(self.xray, XRayOptions):
            raise ValueError(f"xray must be XRayOptions, got {type(self.xray).__name__}")

    @property
    def suffix(self) -> str:
        """File suffix of every image and label: ``.nii.gz`` or ``.png``."""
        return KINDS[self.kind][0]

    @property
    def labels(self) -> tuple[str, ...]:
        """Label names, index = value (background first)."""
        return KINDS[self.kind][2]


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


def case_paths(cid: str, suffix: str = ".nii.gz") -> dict[str, str]:
    """Paths (relative to the studies folder) of every file a case may have."""
    name = f"{cid}{suffix}"
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
    spacing, shape = (
        (options.phantom.spacing, options.phantom.shape)
        if options.kind == "phantom"
        else (PIXEL_SPACING, options.xray.shape)
    )
    manifest = {
        "kind": options.kind,
        "seed": options.seed,
        "n": options.n,
        "labels": {name: value for value, name in enumerate(options.labels)},
        "spacing": [float(s) for s in spacing],
        "shape": [int(s) for s in shape],
        "cases": cases,
    }
    atomic_write_json(dataset_json(options), out / DATASET_JSON)
    atomic_write_json(manifest, out / MANIFEST)
    (out / IN_PROGRESS).unlink()
    return manifest


def dataset_json(options: DemoOptions) -> dict[str, Any]:
    """nnU-Net v2 style ``dataset.json``: names a data planner can give the structures.

    ``numTraining`` counts the cases with an expert label (``labels/final``).
    """
    suffix, modality, labels = KINDS[options.kind]
    return {
        "channel_names": {"0": modality},
        "labels": {name: value for value, name in enumerate(labels)},
        "numTraining": options.n_final,
        "file_ending": suffix,
    }


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
                ids |= set(json.loads(path.read_text(encoding="utf-8"))["cases"])
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
    paths = case_paths(cid, options.suffix)
    seed = _seed(options, index, "phantom")
    if options.kind == "xray":
        xray = make_xray(seed=seed, options=options.xray)
        image, truth, affine, spacing = xray.image, xray.label, None, PIXEL_SPACING
    else:
        phantom = make_phantom(seed=seed, options=options.phantom)
        image = np.clip(np.rint(phantom.image), HU_MIN, HU_MAX).astype(np.int16)
        truth, affine, spacing = phantom.label, phantom.affine, phantom.spacing
    _write_array(out / paths["image"], image, affine)
    _write_array(out / paths["truth"], truth, affine)
    if role == "final":
        _write_array(out / paths["final"], truth, affine)
    records: list[dict[str, Any]] = []
    scores: dict[str, float] = {}
    if role == "noisy":
        rng = np.random.default_rng(_seed(options, index, "corruption"))
        if options.kind == "xray":
            noisy, records = corrupt_xray_label(truth, rng=rng)
        else:
            noisy, records = corrupt_label(truth, rng=rng, spacing=spacing)
        _write_array(out / paths["noisy"], noisy, affine)
        scores = _dice_per_structure(noisy, truth, options.labels)
    return {
        "role": role,
        "image": paths["image"],
        "label": paths["final"] if role == "final" else None,
        "truth": paths["truth"],
        "noisy": paths["noisy"] if role == "noisy" else None,
        "corruptions": records,
        "dice_noisy_vs_truth": scores,
        "voxel_counts": _voxel_counts(truth, options.labels),
    }


def _dice_per_structure(
    noisy: np.ndarray, truth: np.ndarray, labels: tuple[str, ...]
) -> dict[str, float]:
    return {
        name: float(dice(noisy == value, truth == value))
        for value, name in enumerate(labels)
        if value
    }


def _voxel_counts(label: np.ndarray, labels: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(label.ravel(), minlength=len(labels))
    return {name: int(counts[value]) for value, name in enumerate(labels) if value}


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A .nii.gz file's bytes: qform and sform set to ``affine`` (mm), no gzip timestamp."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def png_bytes(array: np.ndarray) -> bytes:
    """A grey 8-bit PNG file's bytes (``array`` is ``[row, column]``); no time chunk."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_array(path: Path, array: np.ndarray, affine: np.ndarray | None) -> None:
    """Write a NIfTI (``affine`` given) or a PNG atomically: a reader or a crash never sees
    a half-written file."""
    data = png_bytes(array) if affine is None else nifti_bytes(array, affine)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _remove_stale(out: Path, earlier: set[str], cases: dict[str, dict[str, Any]]) -> None:
    """Delete files an earlier demo wrote that this one did not (fewer cases, other roles)."""
    written = {case[key] for case in cases.values() for key in ("image", "label", "truth", "noisy")}
    for cid in sorted(earlier):
        for suffix, _, _ in KINDS.values():
            for rel in case_paths(cid, suffix).values():
                if rel not in written:
                    (out / rel).unlink(missing_ok=True)
