"""Several annotators' labels of one image: their consensus and how much they agree.

- :func:`staple` (binary masks): STAPLE (Warfield, Zou & Wells, IEEE TMI 23(7), 2004),
  SimpleITK's ``STAPLEImageFilter``. An EM over the hidden true mask ``T``: each annotator
  ``j`` has a sensitivity ``p_j`` and a specificity ``q_j``; the E-step gives every voxel
  ``W_i = P(T_i = 1 | D, p, q) = a_i / (a_i + b_i)`` with
  ``a_i = f * prod_j p_j^D_ij (1 - p_j)^(1 - D_ij)`` and
  ``b_i = (1 - f) * prod_j q_j^(1 - D_ij) (1 - q_j)^D_ij`` (``f``: the foreground prior,
  the masks' mean foreground share); the M-step sets ``p_j = sum_i W_i D_ij / sum_i W_i`` and
  ``q_j = sum_i (1 - W_i)(1 - D_ij) / sum_i (1 - W_i)``. The consensus is ``W >= 0.5``: unlike
  a vote, a reliable annotator outweighs careless ones.
- :func:`consensus_label` (integer label maps): SimpleITK's ``MultiLabelSTAPLEImageFilter``
  (Rohlfing et al., 2004: the same EM with one confusion matrix per annotator instead of
  ``p_j, q_j``); voxels it leaves undecided (tied) take the vote. With fewer than
  :data:`MIN_STAPLE_ANNOTATORS` annotators it is the voxel-wise vote (:func:`majority_vote`):
  with two, each disagreement could be either annotator's error, so their rates cannot be
  told apart. The returned :class:`Consensus` says which method made it.
- :func:`agreement`: mean pairwise Dice among the annotators, per structure.
- :func:`agreement_with`: how well one label agrees with the annotators, per structure: the
  mean Dice of its mask to each annotator's, with one annotator whose label map equals it
  left out (its own). Unlike :func:`agreement` it says *which* label is the odd one.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

MIN_STAPLE_ANNOTATORS = 3
"""Fewest annotators STAPLE is used for; below it the consensus is a vote."""


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Consensus:
    """A consensus label map and how it was made."""

    label: np.ndarray
    """Integer label map (uint8 when the values fit, else uint16)."""
    method: str
    """``"staple"`` (multi-label STAPLE) or ``"majority"`` (voxel-wise vote)."""
    n_annotators: int


def mean_pairwise_dice(masks: Sequence[np.ndarray]) -> float:
    """Mean Dice ``2|A & B| / (|A| + |B|)`` over all pairs of masks (1.0 with fewer than two;
    two empty masks agree)."""
    values = []
    for a, b in itertools.combinations(masks, 2):
        total = np.count_nonzero(a) + np.count_nonzero(b)
        values.append(1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total)
    return float(np.mean(values)) if values else 1.0


def agreement(label_maps: Sequence[np.ndarray], label_map: Mapping[str, int]) -> dict[str, float]:
    """Structure name -> mean pairwise Dice of its masks among the annotators' label maps."""
    maps = _check_maps(label_maps, minimum=2)
    return {
        name: mean_pairwise_dice([m == value for m in maps]) for name, value in label_map.items()
    }


def agreement_with(
    label: np.ndarray, label_maps: Sequence[np.ndarray], label_map: Mapping[str, int]
) -> dict[str, float]:
    """Structure name -> mean Dice of ``label``'s mask to the other annotators' (module
    docstring); ValueError when no other annotator is left."""
    maps = list(_check_maps(label_maps, minimum=1))
    label = np.asarray(label)
    own = next((i for i, m in enumerate(maps) if np.array_equal(m, label)), None)
    others = [m for i, m in enumerate(maps) if i != own]
    if not others:
        raise ValueError("agreement_with needs an annotator other than the label's own")
    return {
        name: float(np.mean([mean_pairwise_dice([label == value, m == value]) for m in others]))
        for name, value in label_map.items()
    }


def staple(masks: Sequence[np.ndarray]) -> np.ndarray:
    """STAPLE consensus (module docstring) of three or more binary masks, as a bool mask.

    Identical masks are returned as they are (STAPLE's fixed point; its rates are 0/0 for
    masks that are all empty).
    """
    binary = [np.asarray(m).astype(bool) for m in _check_maps(masks, minimum=MIN_STAPLE_ANNOTATORS)]
    if all(np.array_equal(binary[0], m) for m in binary[1:]):
        return binary[0].copy()
    stapler = sitk.STAPLEImageFilter()
    stapler.SetForegroundValue(1)
    probability = sitk.GetArrayFromImage(
        stapler.Execute([sitk.GetImageFromArray(m.astype(np.uint8)) for m in binary])
    )
    return np.nan_to_num(probability, nan=0.0) >= 0.5


def majority_vote(label_maps: Sequence[np.ndarray], values: Sequence[int]) -> np.ndarray:
    """Voxel-wise plurality vote over ``values`` and background 0: the value with the most
    votes; a tie between values is background (no value wins it; two annotators who disagree
    about a voxel leave it background)."""
    maps = _check_maps(label_maps, minimum=1)
    choices = [0, *sorted({int(v) for v in values} - {0})]
    counts = np.stack([sum((m == v).astype(np.uint16) for m in maps) for v in choices])
    tied = (counts == counts.max(axis=0)).sum(axis=0) > 1
    winner = np.where(tied, 0, counts.argmax(axis=0))
    return np.asarray(choices, dtype=_dtype(choices))[winner]


def consensus_label(label_maps: Sequence[np.ndarray], label_map: Mapping[str, int]) -> Consensus:
    """The annotators' consensus label map: multi-label STAPLE from three annotators on,
    the vote below (module docstring). Values outside ``label_map`` count as background."""
    values = [int(v) for v in label_map.values()]
    maps = [np.where(np.isin(m, values), m, 0) for m in _check_maps(label_maps, minimum=1)]
    dtype = _dtype([0, *values])
    vote = majority_vote(maps, values).astype(dtype)
    if len(maps) < MIN_STAPLE_ANNOTATORS:
        return Consensus(label=vote, method="majority", n_annotators=len(maps))
    undecided = max(values, default=0) + 1
    stapler = sitk.MultiLabelSTAPLEImageFilter()
    stapler.SetLabelForUndecidedPixels(undecided)
    fused = sitk.GetArrayFromImage(
        stapler.Execute([sitk.GetImageFromArray(m.astype(np.uint16)) for m in maps])
    )
    label = np.where(fused == undecided, vote, fused).astype(dtype)
    return Consensus(label=label, method="staple", n_annotators=len(maps))


def _check_maps(maps: Sequence[np.ndarray], *, minimum: int) -> list[np.ndarray]:
    arrays = [np.asarray(m) for m in maps]
    if len(arrays) < minimum:
        raise ValueError(f"need at least {minimum} label maps, got {len(arrays)}")
    for i, a in enumerate(arrays):
        if a.shape != arrays[0].shape:
            raise ValueError(f"label map {i} has shape {a.shape}, the first {arrays[0].shape}")
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise ValueError(f"label map {i} must be integer, got dtype {a.dtype}")
    return arrays


def _dtype(values: Sequence[int]) -> type[np.integer]:
    return np.uint8 if max(values) < 255 else np.uint16
