"""What is known about one image: per structure an area/volume and a few clicked voxels.

A structure is a label value ``k >= 1`` (0 is background); the network's softmax channel
``k`` is its soft mask ``m_k``. Clicks are integer voxel coordinates ``[n, ndim]`` in the
order of the image's spatial axes. ``clicks_in`` are voxels inside the structure,
``clicks_out`` voxels known *not* to belong to it (background or another structure).

Records validate themselves on construction (area finite and positive, clicks integer
``[n, ndim]``, spacing finite and positive with one value per clicked axis, no voxel both
inside and outside a structure, no voxel inside two structures);
:meth:`ImageTargets.check_shape` adds the checks that need the image (spacing length =
number of spatial axes, clicks inside the image). Every refusal is a ``ValueError`` saying
which structure and which field is wrong and why.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _as_clicks(value: Any, structure: int, field: str) -> torch.Tensor:
    """``value`` as a long tensor ``[n, ndim]``; refuses non-integer or malformed input."""
    where = f"structure {structure}: {field}"
    if value is None:
        return torch.zeros((0, 0), dtype=torch.long)
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
    else:
        try:
            t = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where} is not an array of coordinates: {e}") from e
    if t.numel() == 0:
        ndim = int(t.shape[1]) if t.ndim == 2 else 0
        return torch.zeros((0, ndim), dtype=torch.long)
    if t.ndim != 2:
        raise ValueError(f"{where} must be [n, ndim] voxel coordinates, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool:
        raise ValueError(f"{where} must hold voxel coordinates, not a boolean mask")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{where} holds non-finite coordinates")
        if not bool((t == t.round()).all()):
            raise ValueError(f"{where} holds non-integer coordinates (voxel indices expected)")
    t = t.long()
    if bool((t < 0).any()):
        bad = tuple(int(v) for v in t[(t < 0).any(dim=1)][0])
        raise ValueError(f"{where}: click {bad} lies outside the image (negative coordinate)")
    return t


@dataclasses.dataclass(frozen=True, kw_only=True)
class StructureStats:
    """What is known about one structure in one image."""

    structure: int
    """Label value of the structure (>= 1; channel ``structure`` of the network's softmax)."""
    area_mm: float | None = None
    """Known size in physical units: area in mm^2 for 2D, volume in mm^3 for 3D (None: unknown)."""
    clicks_in: torch.Tensor = dataclasses.field(
        default_factory=lambda: torch.zeros((0, 0), dtype=torch.long)
    )
    """Voxels inside the structure: integer coordinates ``[n, ndim]`` (any array-like)."""
    clicks_out: torch.Tensor = dataclasses.field(
        default_factory=lambda: torch.zeros((0, 0), dtype=torch.long)
    )
    """Voxels known not to belong to the structure: ``[m, ndim]``."""

    def __post_init__(self) -> None:
        s = self.structure
        if isinstance(s, bool) or not isinstance(s, int | np.integer) or int(s) < 1:
            raise ValueError(f"structure must be an integer label value >= 1, got {s!r}")
        object.__setattr__(self, "structure", int(s))
        if self.area_mm is not None:
            try:
                area = float(self.area_mm)
            except (TypeError, ValueError) as e:
                raise ValueError(f"structure {s}: area_mm is not a number: {self.area_mm!r}") from e
            if not math.isfinite(area):
                raise ValueError(f"structure {s}: area_mm must be finite, got {area}")
            if area < 0:
                raise ValueError(f"structure {s}: area_mm must not be negative, got {area}")
            if area == 0:
                raise ValueError(
                    f"structure {s}: area_mm must be positive (L_stat divides by it), got 0"
                )
            object.__setattr__(self, "area_mm", area)
        clicks_in = _as_clicks(self.clicks_in, s, "clicks_in")
        clicks_out = _as_clicks(self.clicks_out, s, "clicks_out")
        dims = {c.shape[1] for c in (clicks_in, clicks_out) if c.shape[0]}
        if len(dims) > 1:
            raise ValueError(
                f"structure {s}: clicks_in and clicks_out have different numbers of axes {dims}"
            )
        both = _coordinate_set(clicks_in) & _coordinate_set(clicks_out)
        if both:
            raise ValueError(f"structure {s}: voxel {min(both)} is clicked both inside and outside")
        object.__setattr__(self, "clicks_in", clicks_in)
        object.__setattr__(self, "clicks_out", clicks_out)

    @property
    def has_area(self) -> bool:
        """True when the area/volume is known."""
        return self.area_mm is not None

    @property
    def has_clicks(self) -> bool:
        """True when at least one voxel is clicked inside or outside."""
        return bool(self.clicks_in.shape[0] or self.clicks_out.shape[0])


def _coordinate_set(clicks: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in row) for row in clicks}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageTargets:
    """Everything known about one image: its voxel spacing and per-structure statistics."""

    spacing: tuple[float, ...]
    """Voxel size in mm, one value per spatial axis (2 for 2D, 3 for 3D)."""
    structures: list[StructureStats] = dataclasses.field(default_factory=list)
    """Known statistics per structure (each structure at most once; may be empty)."""

    def __post_init__(self) -> None:
        try:
            spacing = tuple(float(v) for v in self.spacing)
        except (TypeError, ValueError) as e:
            raise ValueError(f"spacing must be a sequence of numbers, got {self.spacing!r}") from e
        if len(spacing) not in (2, 3):
            raise ValueError(f"spacing must have 2 (2D) or 3 (3D) values, got {len(spacing)}")
        if not all(math.isfinite(v) and v > 0 for v in spacing):
            raise ValueError(f"spacing values must be finite and positive, got {spacing}")
        object.__setattr__(self, "spacing", spacing)
        structures = list(self.structures)
        seen: set[int] = set()
        inside: dict[tuple[int, ...], int] = {}
        for st in structures:
            if not isinstance(st, StructureStats):
                raise ValueError(f"structures must hold StructureStats, got {type(st).__name__}")
            if st.structure in seen:
                raise ValueError(f"structure {st.structure} is listed twice")
            seen.add(st.structure)
            for field in ("clicks_in", "clicks_out"):
                clicks = getattr(st, field)
                if clicks.shape[0] and clicks.shape[1] != len(spacing):
                    raise ValueError(
                        f"structure {st.structure}: {field} has {clicks.shape[1]} coordinates "
                        f"per click but spacing has {len(spacing)} axes"
                    )
            for voxel in _coordinate_set(st.clicks_in):
                other = inside.setdefault(voxel, st.structure)
                if other != st.structure:
                    raise ValueError(
                        f"voxel {voxel} is clicked inside both structure {other} "
                        f"and structure {st.structure}"
                    )
        object.__setattr__(self, "structures", structures)

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return len(self.spacing)

    @property
    def voxel_volume(self) -> float:
        """Physical size of one voxel: product of the spacing (mm^2 in 2D, mm^3 in 3D)."""
        return math.prod(self.spacing)

    @property
    def max_structure(self) -> int:
        """Largest structure label value mentioned (0 when none)."""
        return max((st.structure for st in self.structures), default=0)

    def get(self, structure: int) -> StructureStats | None:
        """The statistics of ``structure``, or None if nothing is known about it."""
        return next((st for st in self.structures if st.structure == structure), None)

    def check_shape(self, spatial_shape: Sequence[int]) -> None:
        """Refuse targets that do not fit an image of ``spatial_shape`` (voxels).

        The spacing needs one value per spatial axis and every click must lie inside the
        image. Raises ``ValueError`` naming the structure, the click and the shape.
        """
        shape = tuple(int(v) for v in spatial_shape)
        if len(shape) != self.ndim:
            raise ValueError(
                f"spacing has {self.ndim} values but the image has {len(shape)} spatial axes "
                f"(shape {shape})"
            )
        limit = torch.tensor(shape)
        for st in self.structures:
            for field in ("clicks_in", "clicks_out"):
                clicks = getattr(st, field)
                if not clicks.shape[0]:
                    continue
                outside = (clicks >= limit).any(dim=1)
                if bool(outside.any()):
                    bad = tuple(int(v) for v in clicks[outside][0])
                    raise ValueError(
                        f"structure {st.structure}: {field} click {bad} lies outside the "
                        f"image of shape {shape}"
                    )


def click_mask(clicks: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Boolean map ``[*spatial_shape]``, True at the clicked voxels ``[n, ndim]``."""
    mask = torch.zeros(tuple(spatial_shape), dtype=torch.bool)
    if clicks.shape[0]:
        mask[tuple(clicks.long().T)] = True
    return mask


def click_maps(
    targets: ImageTargets, spatial_shape: Sequence[int], num_structures: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse click maps of one image: ``(inside, outside)``, each bool ``[K, *spatial]``.

    Row ``k - 1`` belongs to structure ``k``; K defaults to the largest structure listed.
    """
    targets.check_shape(spatial_shape)
    k = targets.max_structure if num_structures is None else num_structures
    if targets.max_structure > k:
        raise ValueError(f"structure {targets.max_structure} exceeds num_structures={k}")
    inside = torch.zeros((k, *spatial_shape), dtype=torch.bool)
    outside = torch.zeros_like(inside)
    for st in targets.structures:
        inside[st.structure - 1] = click_mask(st.clicks_in, spatial_shape)
        outside[st.structure - 1] = click_mask(st.clicks_out, spatial_shape)
    return inside, outside


def sparse_label_map(
    targets: ImageTargets, spatial_shape: Sequence[int], *, ignore_index: int = -1
) -> torch.Tensor:
    """Long map ``[*spatial]``: ``k`` at voxels clicked inside structure ``k``, else
    ``ignore_index`` (outside-clicks are not drawn: they do not say which class a voxel is)."""
    targets.check_shape(spatial_shape)
    out = torch.full(tuple(spatial_shape), ignore_index, dtype=torch.long)
    for st in targets.structures:
        if st.clicks_in.shape[0]:
            out[tuple(st.clicks_in.T)] = st.structure
    return out


def sample_clicks(mask: torch.Tensor, n: int, *, generator: torch.Generator) -> torch.Tensor:
    """``min(n, mask.sum())`` distinct voxels of a boolean ``mask``, uniformly: ``[n, ndim]``."""
    where = torch.nonzero(mask.bool())
    if n <= 0 or where.shape[0] == 0:
        return torch.zeros((0, mask.ndim), dtype=torch.long)
    pick = torch.randperm(where.shape[0], generator=generator)[:n]
    return where[pick]


def targets_from_label(
    label: torch.Tensor,
    spacing: Sequence[float],
    *,
    n_in: int = 5,
    n_out: int = 0,
    with_area: bool = True,
    structures: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> ImageTargets:
    """Simulated weak supervision from a full label map ``[*spatial]`` (for experiments).

    Per structure (default: every nonzero value present): the true area/volume
    ``count * voxel_volume`` (if ``with_area``), ``n_in`` clicks drawn uniformly inside and
    ``n_out`` drawn uniformly outside it.
    """
    generator = generator or torch.Generator().manual_seed(0)
    values = (
        [int(v) for v in torch.unique(label) if int(v) != 0]
        if structures is None
        else [int(v) for v in structures]
    )
    vv = math.prod(float(s) for s in spacing)
    out = []
    for k in values:
        mask = label == k
        count = int(mask.sum())
        out.append(
            StructureStats(
                structure=k,
                area_mm=count * vv if with_area and count else None,
                clicks_in=sample_clicks(mask, n_in, generator=generator),
                clicks_out=sample_clicks(~mask, n_out, generator=generator),
            )
        )
    targets = ImageTargets(spacing=tuple(spacing), structures=out)
    targets.check_shape(label.shape)
    return targets
