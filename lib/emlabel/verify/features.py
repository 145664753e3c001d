"""Per-image, per-structure evidence about a label: the input of the verifier and the expert.

:func:`structure_features` turns numpy arrays (a label map, the label maps predicted by the
members of a model ensemble, optionally the image intensities) into one
:class:`StructureFeatures` record per structure. Every number is defined here:

- ``dice_to_ensemble_mean``: soft Dice between the label ``L`` and the ensemble's mean map
  ``p = mean_k P_k`` (each ``P_k`` a member's binary mask of the structure):
  ``2 * sum(L * p) / (sum(L) + sum(p))``. With one member it is the plain Dice; it needs no
  vote threshold. 1.0 when label and every member are empty.
- ``assd_mm`` / ``hd95_mm``: ASSD and HD95 (:func:`emlabel.metrics.binary_metrics`, in mm)
  between the label and the ensemble's *majority* mask ``p >= 0.5`` (with two members: their
  union). 0.0 when both are empty; when exactly one is empty the metric is infinite and is
  stored as ``distance_cap_mm`` (default :data:`DISTANCE_CAP_MM`), a finite stand-in that
  keeps the records JSON-able and the verifier's arithmetic finite.
- ``ensemble_disagreement``: ``1 - mean pairwise Dice`` among the members (0.0 with one
  member; two empty members agree perfectly).
- ``ensemble_present_fraction``: fraction of members with at least one voxel of the structure;
  ``ensemble_volume_mm3``: the members' mean volume.
- ``volume_mm3``: label voxels times the voxel volume.
- ``n_components`` / ``largest_component_fraction``: connected components of the label mask
  (:func:`scipy.ndimage.label`, full 26-connectivity in 3D so that diagonal contact joins) and
  the share of the label's voxels in the largest one (0 components and fraction 1.0 when empty).
- ``contained_in``: for a structure with a parent (``containment``, default lesion -> liver):
  the fraction of the structure's outer shell (voxels face-adjacent to it and outside it,
  voxels beyond the array border counting as outside) that belongs to the parent. In one label
  map a lesion never overlaps the liver -- it is carved out of it -- so "inside" means
  "surrounded by": 1.0 for a lesion wholly inside the liver, 0.0 for one floating outside it,
  about 0.6 for one sticking 40% out. ``None`` without a parent or when the label is empty.
- ``intensity_mean`` / ``intensity_std``: of the image inside the label (``None`` without an
  image or when the label is empty).
- ``annotator_agreement``: mean Dice of the label's structure to the other annotators'
  (:func:`emlabel.labels.consensus.agreement_with`: the annotator whose label map is this
  label is left out; two empty masks agree); ``None`` with fewer than two annotators.
  ``n_annotators``: how many annotators' label maps the image has.

When no prediction is given the ensemble fields are ``None`` (the verifier then ignores those
signals). All records are plain JSON-able dataclasses (:meth:`StructureFeatures.to_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from emlabel.labels.consensus import agreement_with, mean_pairwise_dice
from emlabel.metrics import binary_metrics
from emlabel.settings import DEMO_LABELS

DISTANCE_CAP_MM = 500.0
"""Finite stand-in for an infinite surface distance (one mask empty, the other not)."""

DEFAULT_CONTAINMENT: dict[str, str] = {"lesion": "liver"}
"""Child structure -> the structure that must surround it (applied when both are labelled)."""

DEFAULT_LABELS: dict[str, int] = {name: i + 1 for i, name in enumerate(DEMO_LABELS)}
"""Structure name -> label value of the demo data (0 = background)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StructureFeatures:
    """Evidence about one structure of one label map; see the module docstring."""

    structure: str
    """Structure name (e.g. ``liver``)."""
    value: int
    """Its label value."""
    image_id: str = ""
    """Image the label belongs to (informative only)."""
    volume_mm3: float = 0.0
    """Label volume in mm^3."""
    n_components: int = 0
    """Connected components of the label (26-connectivity in 3D)."""
    largest_component_fraction: float = 1.0
    """Share of the label's voxels in its largest component (1.0 when empty)."""
    n_members: int = 0
    """Ensemble members the agreement fields were computed from (0 = none)."""
    dice_to_ensemble_mean: float | None = None
    """Soft Dice of the label to the ensemble's mean map."""
    assd_mm: float | None = None
    """ASSD (mm) to the ensemble's majority mask, capped at the distance cap."""
    hd95_mm: float | None = None
    """HD95 (mm) to the ensemble's majority mask, capped at the distance cap."""
    ensemble_disagreement: float | None = None
    """1 - mean pairwise Dice among the members."""
    ensemble_present_fraction: float | None = None
    """Fraction of members predicting at least one voxel of the structure."""
    ensemble_volume_mm3: float | None = None
    """Mean volume (mm^3) of the members' masks."""
    parent: str | None = None
    """Structure that should surround this one (from ``containment``), if any."""
    contained_in: float | None = None
    """Fraction of the structure's outer shell that belongs to ``parent``."""
    intensity_mean: float | None = None
    """Mean image intensity inside the label."""
    intensity_std: float | None = None
    """Standard deviation of the image intensity inside the label."""
    n_annotators: int = 0
    """Annotators' label maps of the image (0 = none given)."""
    annotator_agreement: float | None = None
    """Mean Dice of the label to the other annotators (None with fewer than two annotators)."""

    @property
    def empty(self) -> bool:
        """True when the label has no voxel of this structure."""
        return self.volume_mm3 <= 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict that :meth:`from_dict` reads back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StructureFeatures:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def resolve_containment(
    containment: Mapping[str | int, str | int] | None, labels: Mapping[str, int]
) -> dict[str, str]:
    """Child -> parent by structure name; entries may name structures or give label values.

    ``None`` means :data:`DEFAULT_CONTAINMENT`, keeping only pairs whose structures are both in
    ``labels``; an explicit mapping must only use known structures (else ValueError).
    """
    by_value = {v: k for k, v in labels.items()}

    def name_of(key: str | int) -> str:
        if isinstance(key, str) and key in labels:
            return key
        if isinstance(key, int | np.integer) and int(key) in by_value:
            return by_value[int(key)]
        raise ValueError(f"containment names unknown structure {key!r}; known: {dict(labels)}")

    if containment is None:
        return {c: p for c, p in DEFAULT_CONTAINMENT.items() if c in labels and p in labels}
    resolved = {name_of(c): name_of(p) for c, p in containment.items()}
    for child, parent in resolved.items():
        if child == parent:
            raise ValueError(f"structure {child!r} cannot contain itself")
    return resolved


def structure_features(
    label: np.ndarray,
    predictions: Sequence[np.ndarray] = (),
    *,
    spacing: Sequence[float],
    labels: Mapping[str, int] | None = None,
    image: np.ndarray | None = None,
    containment: Mapping[str | int, str | int] | None = None,
    image_id: str = "",
    distance_cap_mm: float = DISTANCE_CAP_MM,
    annotations: Sequence[np.ndarray] = (),
) -> dict[str, StructureFeatures]:
    """One :class:`StructureFeatures` per structure of ``labels`` (default: the demo labels).

    ``label``: integer label map; ``predictions``: the ensemble members' label maps (same
    shape and values; may be empty); ``image``: intensities of the same shape, optional;
    ``spacing``: voxel size in mm per axis; ``containment``: child -> parent (names or
    values; ``None`` = lesion in liver when both are labelled, ``{}`` = none);
    ``annotations``: every annotator's label map of the image (same shape and values).
    """
    label = np.asarray(label)
    labels = dict(DEFAULT_LABELS if labels is None else labels)
    members = [np.asarray(p) for p in predictions]
    annotators = [np.asarray(a) for a in annotations]
    sp = _check_inputs(label, members, image, spacing, annotators)
    if distance_cap_mm <= 0:
        raise ValueError(f"distance_cap_mm must be positive, got {distance_cap_mm}")
    parents = resolve_containment(containment, labels)
    voxel_mm3 = float(np.prod(sp))
    intensities = None if image is None else np.asarray(image, dtype=np.float64)
    agreed = agreement_with(label, annotators, labels) if len(annotators) >= 2 else {}

    result: dict[str, StructureFeatures] = {}
    for name, value in labels.items():
        mask = label == value
        n_voxels = int(np.count_nonzero(mask))
        n_comp, largest = _components(mask)
        fields: dict[str, Any] = {
            "structure": name,
            "value": int(value),
            "image_id": image_id,
            "volume_mm3": n_voxels * voxel_mm3,
            "n_components": n_comp,
            "largest_component_fraction": largest,
            "n_annotators": len(annotators),
            "annotator_agreement": agreed.get(name),
        }
        if members:
            member_masks = [m == value for m in members]
            fields.update(_ensemble_fields(mask, member_masks, sp, voxel_mm3, distance_cap_mm))
        parent = parents.get(name)
        if parent is not None:
            fields["parent"] = parent
            if n_voxels:
                fields["contained_in"] = _shell_fraction(mask, label == labels[parent])
        if intensities is not None and n_voxels:
            inside = intensities[mask]
            fields["intensity_mean"] = float(inside.mean())
            fields["intensity_std"] = float(inside.std())
        result[name] = StructureFeatures(**fields)
    return result


def _check_inputs(
    label: np.ndarray,
    members: Sequence[np.ndarray],
    image: np.ndarray | None,
    spacing: Sequence[float],
    annotators: Sequence[np.ndarray] = (),
) -> list[float]:
    if not np.issubdtype(label.dtype, np.integer) and label.dtype != bool:
        raise ValueError(f"label must be an integer label map, got dtype {label.dtype}")
    for kind, arrays in (("prediction", members), ("annotation", annotators)):
        for i, array in enumerate(arrays):
            if array.shape != label.shape:
                raise ValueError(f"{kind} {i} has shape {array.shape}, label {label.shape}")
    if image is not None and np.shape(image) != label.shape:
        raise ValueError(f"image has shape {np.shape(image)}, label {label.shape}")
    sp = [float(s) for s in spacing]
    if len(sp) != label.ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing {tuple(spacing)} does not fit a {label.ndim}-D label")
    return sp


def _components(mask: np.ndarray) -> tuple[int, float]:
    """Number of connected components (full connectivity) and the largest one's share."""
    if not mask.any():
        return 0, 1.0
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    labelled, n = ndimage.label(mask, structure=structure)
    sizes = np.bincount(labelled.ravel())[1:]
    return int(n), float(sizes.max() / sizes.sum())


def soft_dice(mask: np.ndarray, mean_map: np.ndarray) -> float:
    """``2 sum(m * p) / (sum(m) + sum(p))`` of a binary mask and a [0, 1] map; 1.0 if both empty."""
    total = float(np.count_nonzero(mask)) + float(mean_map.sum())
    if total == 0.0:
        return 1.0
    return 2.0 * float(mean_map[mask].sum()) / total


def _ensemble_fields(
    mask: np.ndarray,
    member_masks: Sequence[np.ndarray],
    spacing: Sequence[float],
    voxel_mm3: float,
    distance_cap_mm: float,
) -> dict[str, Any]:
    mean_map = np.mean(np.stack(member_masks), axis=0)
    majority = mean_map >= 0.5
    metrics = binary_metrics(majority, mask, spacing=spacing)
    present = [bool(m.any()) for m in member_masks]
    return {
        "n_members": len(member_masks),
        "dice_to_ensemble_mean": soft_dice(mask, mean_map),
        "assd_mm": min(float(metrics.assd), distance_cap_mm),
        "hd95_mm": min(float(metrics.hd95), distance_cap_mm),
        "ensemble_disagreement": 1.0 - mean_pairwise_dice(member_masks),
        "ensemble_present_fraction": float(np.mean(present)),
        "ensemble_volume_mm3": float(np.mean([np.count_nonzero(m) for m in member_masks]))
        * voxel_mm3,
    }


def _shell_fraction(mask: np.ndarray, parent: np.ndarray) -> float:
    """Share of the voxels face-adjacent to ``mask`` (outside it) that are ``parent``.

    The arrays are padded by one voxel so that a structure touching the border has outside
    (non-parent) neighbours there.
    """
    padded = np.pad(mask, 1)
    shell = ndimage.binary_dilation(padded) & ~padded
    n_shell = int(np.count_nonzero(shell))
    if n_shell == 0:  # the structure fills the whole array
        return 0.0
    return float(np.count_nonzero(shell & np.pad(parent, 1))) / n_shell
