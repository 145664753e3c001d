"""Realistic label errors for the phantom label map, to make "noisy" demo labels.

Each function simulates one kind of annotation mistake on a label map with the values of
:data:`~emlabel.data.phantoms.PHANTOM_LABELS`. All take ``(label, *, rng, spacing, ...)``,
never modify ``label``, and return ``(new_label, record)`` where ``record`` is a JSON-friendly
dict saying what was done: ``{"kind": ..., "structure": name, ...parameters}``. Optional
keyword arguments fix the otherwise random choices (used by tests).

Voxels a structure gives up go to its surrounding class: background, except for the lesion,
which lives inside the liver and gives voxels back to the liver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from emlabel.data.phantoms import PHANTOM_LABELS

Record = dict[str, Any]
Spacing = Sequence[float]

NOISE_KINDS: tuple[str, ...] = (
    "erode_or_dilate",
    "drop_structure",
    "shift_structure",
    "swap_structures",
    "add_spurious_blobs",
    "relabel_lesion",
)

FOREGROUND: tuple[str, ...] = PHANTOM_LABELS[1:]
DROP_CANDIDATES: tuple[str, ...] = ("spleen", "kidney", "adrenal")  # the small, easily missed
SHIFT_CANDIDATES: tuple[str, ...] = ("liver", "spleen", "kidney", "aorta", "adrenal", "lesion")
# Plausible mix-ups: left/right organs, neighbours of similar look.
SWAP_PAIRS: tuple[tuple[str, str], ...] = (
    ("liver", "spleen"),
    ("spleen", "kidney"),
    ("kidney", "adrenal"),
    ("aorta", "adrenal"),
)
SHIFT_MM = (2.0, 6.0)  # range of a random shift's length
BLOB_RADIUS_MM = (2.0, 4.5)
BLOB_REACH_MM = 15.0  # blobs land at most this far from the true structures (inside the body)


def value_of(name: str) -> int:
    """Label value of a structure name; ValueError for an unknown name."""
    if name not in PHANTOM_LABELS:
        raise ValueError(f"unknown structure {name!r}; known: {', '.join(PHANTOM_LABELS)}")
    return PHANTOM_LABELS.index(name)


def surround_of(name: str) -> int:
    """The class around a structure: liver for the lesion, background for the rest."""
    return value_of("liver") if name == "lesion" else 0


def present(label: np.ndarray, names: Sequence[str]) -> list[str]:
    """The structures of ``names`` that have at least one voxel in ``label``."""
    values = set(np.unique(label).tolist())
    return [n for n in names if value_of(n) in values]


def _check(label: np.ndarray, spacing: Spacing) -> None:
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must hold integers, got dtype {label.dtype}")
    if len(spacing) != label.ndim or any(s <= 0 for s in spacing):
        raise ValueError(f"spacing {tuple(spacing)} does not fit a {label.ndim}-D label")


def _pick(
    rng: np.random.Generator, label: np.ndarray, candidates: Sequence[str], structure: str | None
) -> str:
    """The given structure (which must be present) or a random present candidate."""
    if structure is not None:
        if not present(label, [structure]):
            raise ValueError(f"structure {structure!r} is not in the label")
        return structure
    found = present(label, candidates)
    if not found:
        raise ValueError(f"none of {', '.join(candidates)} is in the label")
    return str(rng.choice(found))


def erode_or_dilate(
    label: np.ndarray,
    *,
    rng: np.random.Generator,
    spacing: Spacing,
    structure: str | None = None,
    mode: str | None = None,
    voxels: int | None = None,
) -> tuple[np.ndarray, Record]:
    """A boundary error: one structure drawn 1-3 voxels too tight (erode) or too wide (dilate).

    Dilation only grows into the surrounding class, so neighbours keep their voxels. When the
    requested mode cannot change anything (a structure too thin to erode, or boxed in), the
    other mode is used; the record says which was applied.
    """
    _check(label, spacing)
    name = _pick(rng, label, FOREGROUND, structure)
    mode = mode or str(rng.choice(["erode", "dilate"]))
    if mode not in ("erode", "dilate"):
        raise ValueError(f"mode must be 'erode' or 'dilate', got {mode!r}")
    voxels = int(voxels if voxels is not None else rng.integers(1, 4))
    if voxels < 1:
        raise ValueError(f"voxels must be >= 1, got {voxels}")
    value, around = value_of(name), surround_of(name)
    mask = label == value
    out = label.copy()
    for attempt in (mode, "dilate" if mode == "erode" else "erode"):
        changed, width = _boundary_change(label, mask, around, attempt, voxels)
        if changed.any():
            out[changed] = around if attempt == "erode" else value
            record = {"kind": "erode_or_dilate", "structure": name, "mode": attempt}
            return out, {**record, "width_voxels": width, "changed_voxels": int(changed.sum())}
    raise ValueError(f"structure {name!r} can be neither eroded nor dilated")


def _boundary_change(
    label: np.ndarray, mask: np.ndarray, around: int, mode: str, voxels: int
) -> tuple[np.ndarray, int]:
    """Voxels an erosion/dilation by ``voxels`` would flip (fewer voxels if all would vanish)."""
    if mode == "dilate":
        grown = ndimage.binary_dilation(mask, iterations=voxels, mask=mask | (label == around))
        return grown & ~mask, voxels
    for width in range(voxels, 0, -1):
        kept = ndimage.binary_erosion(mask, iterations=width)
        if kept.any():
            return mask & ~kept, width
    return np.zeros_like(mask), 0


def drop_structure(
    label: np.ndarray,
    *,
    rng: np.random.Generator,
    spacing: Spacing,
    structure: str | None = None,
) -> tuple[np.ndarray, Record]:
    """A missed structure: every voxel of one (by default small) structure set to background."""
    _check(label, spacing)
    name = _pick(rng, label, DROP_CANDIDATES, structure)
    mask = label == value_of(name)
    out = label.copy()
    out[mask] = 0
    return out, {"kind": "drop_structure", "structure": name, "voxels": int(mask.sum())}


def shift_structure(
    label: np.ndarray,
    *,
    rng: np.random.Generator,
    spacing: Spacing,
    structure: str | None = None,
    shift_mm: Sequence[float] | None = None,
) -> tuple[np.ndarray, Record]:
    """A misplaced outline: one structure translated by a few mm (rounded to whole voxels).

    The liver moves together with its lesion. Moved voxels only land on the surrounding
    class; those that would cover another structure or leave the volume are lost.
    """
    _check(label, spacing)
    name = _pick(rng, label, SHIFT_CANDIDATES, structure)
    steps = _shift_steps(rng, spacing, shift_mm)
    values = [value_of(name)] + ([value_of("lesion")] if name == "liver" else [])
    moving = np.isin(label, values)
    around = surround_of(name)
    out = label.copy()
    out[moving] = around
    moved = _translate(np.where(moving, label, 0), steps)
    target = (moved != 0) & (out == around)
    out[target] = moved[target]
    record = {
        "kind": "shift_structure",
        "structure": name,
        "shift_voxels": [int(s) for s in steps],
        "shift_mm": [float(s * d) for s, d in zip(steps, spacing, strict=True)],
        "voxels": int(moving.sum()),
        "lost_voxels": int(moving.sum() - target.sum()),
    }
    return out, record


def _shift_steps(
    rng: np.random.Generator, spacing: Spacing, shift_mm: Sequence[float] | None
) -> np.ndarray:
    """Whole-voxel steps for a shift in mm; a random direction and length when not given."""
    spacing_arr = np.asarray(spacing, float)
    if shift_mm is None:
        direction = rng.normal(size=len(spacing))
        direction /= np.linalg.norm(direction)
        vector = direction * rng.uniform(*SHIFT_MM)
    else:
        vector = np.asarray(shift_mm, float)
        if vector.shape != spacing_arr.shape:
            raise ValueError(f"shift_mm {tuple(shift_mm)} needs {len(spacing)} components")
    steps = np.rint(vector / spacing_arr).astype(int)
    if not steps.any():
        if shift_mm is not None:
            raise ValueError(f"shift_mm {tuple(shift_mm)} is less than half a voxel")
        axis = int(np.argmax(np.abs(vector) / spacing_arr))
        steps[axis] = 1 if vector[axis] >= 0 else -1
    return steps


def _translate(array: np.ndarray, steps: Sequence[int]) -> np.ndarray:
    """``array`` moved by whole-voxel ``steps``, zero-filled (no wrap-around)."""
    out = np.zeros_like(array)
    src, dst = [], []
    for step, n in zip(steps, array.shape, strict=True):
        step = int(step)
        if abs(step) >= n:
            return out
        src.append(slice(max(0, -step), n - max(0, step)))
        dst.append(slice(max(0, step), n - max(0, -step)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def swap_structures(
    label: np.ndarray,
    *,
    rng: np.random.Generator,
    spacing: Spacing,
    structures: tuple[str, str] | None = None,
) -> tuple[np.ndarray, Record]:
    """A class mix-up: the labels of two structures exchanged (e.g. spleen painted as kidney).

    Random pairs come from ``SWAP_PAIRS``; ``structures`` may name any two present ones.
    """
    _check(label, spacing)
    if structures is None:
        pairs = _swappable(label)
        if not pairs:
            raise ValueError("no pair of SWAP_PAIRS is in the label")
        first, second = pairs[int(rng.integers(len(pairs)))]
    else:
        first, second = structures
        if first == second:
            raise ValueError("swap needs two different structures")
        _pick(rng, label, (), first)
        _pick(rng, label, (), second)
    a, b = label == value_of(first), label == value_of(second)
    out = label.copy()
    out[a], out[b] = value_of(second), value_of(first)
    record = {"kind": "swap_structures", "structure": first, "with": second}
    return out, {**record, "voxels": [int(a.sum()), int(b.sum())]}


def _swappable(label: np.ndarray) -> list[tuple[str, str]]:
    found = set(present(label, FOREGROUND))
    return [pair for pair in SWAP_PAIRS if set(pair) <= found]


def add_spurious_blobs(
    label: np.ndarray,
    *,
    rng: np.random.Generator,
    spacing: Spacing,
    structure: str | None = None,
    n_blobs: int | None = None,
) -> tuple[np.ndarray, Record]:
    """False positives: 1-3 small round blobs of one class painted on background.

    Blobs sit apart from the true structures but within ``BLOB_REACH_MM`` of them, i.e. inside
    the body rather than in the air around it.
    """
    _check(label, spacing)
    name = structure if structure is not None else str(rng.choice(FOREGROUND))
    value = value_of(name)
    n_blobs = int(n_blobs if n_blobs is not None else rng.integers(1, 4))
    if n_blobs < 1:
        raise ValueError(f"n_blobs must be >= 1, got {n_blobs}")
    background = label == 0
    if not background.any():
        raise ValueError("the label has no background to put blobs on")
    distance = ndimage.distance_transform_edt(background, sampling=spacing)
    out = label.copy()
    blobs = []
    for _ in range(n_blobs):
        radius = float(rng.uniform(*BLOB_RADIUS_MM))
        center = _blob_center(rng, distance, radius + max(spacing))
        ball = _ball(label.shape, spacing, center, radius) & (out == 0)
        out[ball] = value
        blobs.append(
            {"center": [int(c) for c in center], "radius_mm": radius, "voxels": int(ball.sum())}
        )
    record = {"kind": "add_spurious_blobs", "structure": name, "n_blobs": n_blobs}
    return out, {**record, "blobs": blobs, "voxels": int((out != label).sum())}


def _blob_center(rng: np.random.Generator, distance: np.ndarray, gap_mm: float) -> np.ndarray:
    """A background voxel at least ``gap_mm`` from any structure yet near one."""
    spots = np.argwhere((distance >= gap_mm) & (distance <= gap_mm + BLOB_REACH_MM))
    if len(spots) == 0:
        spots = np.argwhere(distance == distance.max())
    return spots[rng.integers(len(spots))]


def _ball(
    shape: tuple[int, ...], spacing: Spacing, center: np.ndarray, radius_mm: float
) -> np.ndarray:
    """Voxels whose centres lie within ``radius_mm`` of ``center`` (a voxel index)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center, spacing, strict=True))
    return np.asarray(dist2 <= radius_mm**2)


def relabel_lesion(
    label: np.ndarray,
    *,
    rng: np.random.Generator,
    spacing: Spacing,
) -> tuple[np.ndarray, Record]:
    """A wrong class on the lesion: the annotator painted the lesion as ordinary liver."""
    _check(label, spacing)
    _pick(rng, label, (), "lesion")
    mask = label == value_of("lesion")
    out = label.copy()
    out[mask] = value_of("liver")
    record = {"kind": "relabel_lesion", "structure": "lesion", "to": "liver"}
    return out, {**record, "voxels": int(mask.sum())}


Corruption = Callable[..., tuple[np.ndarray, Record]]
CORRUPTIONS: dict[str, Corruption] = {
    "erode_or_dilate": erode_or_dilate,
    "drop_structure": drop_structure,
    "shift_structure": shift_structure,
    "swap_structures": swap_structures,
    "add_spurious_blobs": add_spurious_blobs,
    "relabel_lesion": relabel_lesion,
}


def applicable(kind: str, label: np.ndarray) -> bool:
    """Whether ``kind`` can be applied to ``label`` with random choices."""
    needs = {
        "erode_or_dilate": (FOREGROUND, 1),
        "drop_structure": (DROP_CANDIDATES, 1),
        "shift_structure": (SHIFT_CANDIDATES, 1),
        "relabel_lesion": (("lesion",), 1),
    }
    if kind == "add_spurious_blobs":
        return bool((label == 0).any())
    if kind == "swap_structures":
        return bool(_swappable(label))
    names, count = needs[kind]
    return len(present(label, names)) >= count


def corrupt_label(
    label: np.ndarray,
    *,
    rng: np.random.Generator,
    spacing: Spacing,
    n_errors: int | None = None,
) -> tuple[np.ndarray, list[Record]]:
    """Apply ``n_errors`` (default: random 1-3) different kinds of error, in random order.

    Kinds that do not apply (e.g. no lesion to relabel) are skipped, so fewer records than
    asked come back only when too few kinds apply.
    """
    _check(label, spacing)
    if n_errors is None:
        n_errors = int(rng.integers(1, 4))
    if not 1 <= n_errors <= len(NOISE_KINDS):
        raise ValueError(f"n_errors must be 1..{len(NOISE_KINDS)}, got {n_errors}")
    out, records = label.copy(), []
    for kind in rng.permutation(NOISE_KINDS):
        if len(records) == n_errors:
            break
        if applicable(str(kind), out):
            out, record = CORRUPTIONS[str(kind)](out, rng=rng, spacing=spacing)
            records.append(record)
    return out, records
