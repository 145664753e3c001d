"""Per-class segmentation metrics in physical units (mm), computed with the image spacing.

Five numbers per class, as the project's evaluation spec defines them:

- DSC   = 2TP / (2TP + FP + FN)                      (Dice similarity coefficient)
- RAVD  = |V_pred - V_ref| / V_ref                    (relative absolute volume difference)
- ASSD  = mean(concat(d(P->R), d(R->P)))   [mm]      (average symmetric surface distance)
- MSSD  = max(max d(P->R), max d(R->P))    [mm]      (maximum symmetric surface distance,
                                                      i.e. the symmetric Hausdorff distance)
- HD95  = max(p95 d(P->R), p95 d(R->P))    [mm]      (95th percentile Hausdorff distance)

where d(A->B) is, for every boundary voxel of A, the Euclidean distance in mm to the nearest
boundary voxel of B. Boundary voxels are MONAI's: the mask minus its binary erosion (face
connectivity), i.e. the voxels of the mask that touch a background voxel; distances are
measured between voxel centres with the per-axis spacing.

The distances come from MONAI (``compute_average_surface_distance``,
``compute_hausdorff_distance``), the DSC from ``compute_dice``; only RAVD and the empty-mask
conventions are written by hand, because MONAI has no RAVD and answers empty masks with NaN or
inf plus a warning.

Empty-mask conventions (applied before MONAI is called, so no NaN and no warning is produced):

- both empty:                       DSC 1.0, RAVD 0.0, ASSD = MSSD = HD95 = 0.0
- reference empty, prediction not:  DSC 0.0, RAVD inf, ASSD = MSSD = HD95 = inf
- prediction empty, reference not:  DSC 0.0, RAVD 1.0, ASSD = MSSD = HD95 = inf

MONAI notes (checked against monai 1.6.1):

- ``compute_average_surface_distance(symmetric=True)`` concatenates the two directed distance
  sets and takes one mean (``torch.cat(distances).mean()``), i.e. it *pools* the distances, as
  the spec's ASSD does; it does not average the two directed means. ``tests/test_metrics.py``
  checks this on a case where the two definitions differ.
- The MONAI functions default to ``include_background=False``, which would drop the only
  channel of a single-channel mask; we always pass ``include_background=True``.
- ``prepare_spacing`` rejects a spacing that mixes ints and floats (e.g. ``(1.5, 1, 1)``); we
  pass a list of floats.
- ``get_edge_surface_distance`` triggers MONAI's own ``FutureWarning`` about its deprecated
  ``always_return_as_numpy`` argument on every call; that one warning is silenced here.

MONAI (and torch) are imported inside :func:`binary_metrics` rather than at module level:
importing MONAI takes seconds, and callers that only need :func:`dice` or :func:`mean_metrics`
(e.g. hot loops during training) should not pay for it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

METRIC_NAMES: tuple[str, ...] = ("dsc", "ravd", "assd", "mssd", "hd95")
# Metrics that can be infinite (one mask empty, the other not); mean_metrics skips inf for these.
_INF_METRICS: tuple[str, ...] = ("ravd", "assd", "mssd", "hd95")


@dataclass(frozen=True)
class ClassMetrics:
    """The five metrics of one class in one case (distances in mm); see the module docstring."""

    dsc: float
    ravd: float
    assd: float
    mssd: float
    hd95: float

    def as_dict(self) -> dict[str, float]:
        """Return ``{"dsc": ..., "ravd": ..., "assd": ..., "mssd": ..., "hd95": ...}``."""
        return asdict(self)


def _as_mask(a: np.ndarray, name: str) -> np.ndarray:
    """Return ``a`` as a boolean array; refuse values other than 0/1 (e.g. a label map)."""
    a = np.asarray(a)
    if a.dtype == bool:
        return a
    mask = a.astype(bool)
    if np.any(a[mask] != 1):
        raise ValueError(f"{name} must be a binary mask (bool or 0/1), got other values")
    return mask


def _check_shapes(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must have the same shape, got {pred.shape} and {ref.shape}")


def _check_spacing(spacing: Sequence[float], ndim: int) -> list[float]:
    """Validate the spacing and return it as a list of floats (the form MONAI accepts)."""
    if ndim not in (2, 3):
        raise ValueError(f"images must be 2D or 3D, got {ndim} dimensions")
    values = [float(s) for s in spacing]
    if len(values) != ndim:
        raise ValueError(
            f"spacing must have one value per image axis ({ndim}), got {len(values)}: {spacing}"
        )
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing values must be finite and positive, got {spacing}")
    return values


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two binary masks with plain numpy (cheap enough for hot loops).

    DSC = 2TP / (2TP + FP + FN) = 2|P & R| / (|P| + |R|); 1.0 when both masks are empty.
    """
    p = _as_mask(pred, "pred")
    r = _as_mask(ref, "ref")
    _check_shapes(p, r)
    total = np.count_nonzero(p) + np.count_nonzero(r)
    if total == 0:
        return 1.0
    return 2.0 * np.count_nonzero(p & r) / total


def _crop_to_union(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus a 1-voxel margin.

    MONAI crops the same way internally, so the metrics do not change; doing it first keeps
    the float tensors MONAI builds from the whole volume small.
    """
    union = p | r
    box = []
    for axis in range(union.ndim):
        others = tuple(i for i in range(union.ndim) if i != axis)
        hits = np.flatnonzero(union.any(axis=others))
        box.append(slice(max(int(hits[0]) - 1, 0), min(int(hits[-1]) + 2, union.shape[axis])))
    return p[tuple(box)], r[tuple(box)]


def binary_metrics(pred: np.ndarray, ref: np.ndarray, *, spacing: Sequence[float]) -> ClassMetrics:
    """Metrics of one binary prediction against one binary reference, distances in mm.

    ``pred``/``ref``: bool or 0/1 arrays of the same 2D or 3D shape; ``spacing``: voxel size
    in mm, one value per axis. Empty masks follow the conventions in the module docstring.

    DSC  = 2TP / (2TP + FP + FN)                      (monai compute_dice)
    RAVD = |V_pred - V_ref| / V_ref                    (by hand: MONAI has no RAVD)
    ASSD = mean of pooled d(P->R) and d(R->P)          (monai compute_average_surface_distance)
    MSSD = max(max d(P->R), max d(R->P))               (monai compute_hausdorff_distance)
    HD95 = max(p95 d(P->R), p95 d(R->P))               (same, percentile=95)
    """
    p = _as_mask(pred, "pred")
    r = _as_mask(ref, "ref")
    _check_shapes(p, r)
    sp = _check_spacing(spacing, p.ndim)

    n_pred = int(np.count_nonzero(p))
    n_ref = int(np.count_nonzero(r))
    # Empty masks: answered here, because MONAI would warn and return NaN/inf.
    if n_ref == 0 and n_pred == 0:
        return ClassMetrics(dsc=1.0, ravd=0.0, assd=0.0, mssd=0.0, hd95=0.0)
    if n_ref == 0:
        return ClassMetrics(dsc=0.0, ravd=math.inf, assd=math.inf, mssd=math.inf, hd95=math.inf)
    if n_pred == 0:
        return ClassMetrics(dsc=0.0, ravd=1.0, assd=math.inf, mssd=math.inf, hd95=math.inf)

    # Imported here, not at module level: importing MONAI takes seconds (see module docstring).
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
    )

    p, r = _crop_to_union(p, r)
    # MONAI wants one-hot batches: (batch=1, channel=1, *spatial).
    y_pred = torch.from_numpy(p)[None, None].float()
    y_ref = torch.from_numpy(r)[None, None].float()

    with warnings.catch_warnings():
        # MONAI's own internal call to a deprecated argument, raised on every call.
        warnings.filterwarnings(
            "ignore", message=".*always_return_as_numpy.*", category=FutureWarning
        )
        dsc = compute_dice(y_pred, y_ref, include_background=True, ignore_empty=False)
        assd = compute_average_surface_distance(
            y_pred, y_ref, include_background=True, symmetric=True, spacing=sp
        )
        mssd = compute_hausdorff_distance(y_pred, y_ref, include_background=True, spacing=sp)
        hd95 = compute_hausdorff_distance(
            y_pred, y_ref, include_background=True, percentile=95, spacing=sp
        )

    # RAVD by hand (MONAI has none). Voxel counts suffice: the voxel volume cancels out.
    ravd = abs(n_pred - n_ref) / n_ref
    return ClassMetrics(
        dsc=float(dsc[0, 0]),
        ravd=float(ravd),
        assd=float(assd[0, 0]),
        mssd=float(mssd[0, 0]),
        hd95=float(hd95[0, 0]),
    )


def segmentation_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing: Sequence[float],
    labels: Mapping[str, int],
) -> dict[str, ClassMetrics]:
    """Per-class metrics of two integer label maps, one entry per name in ``labels``.

    Each class is scored as the binary masks ``pred == value`` and ``ref == value`` with
    :func:`binary_metrics`. Background (0) is scored only if it is listed in ``labels``.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    _check_shapes(pred, ref)
    sp = _check_spacing(spacing, pred.ndim)
    return {
        name: binary_metrics(pred == value, ref == value, spacing=sp)
        for name, value in labels.items()
    }


def mean_metrics(
    per_case: Sequence[Mapping[str, ClassMetrics]],
) -> dict[str, dict[str, float]]:
    """Per-class mean of each metric over the cases, for reporting a whole evaluation set.

    For each class (in first-seen order) the result holds ``n_cases`` (cases listing that
    class), the mean of each metric, and for RAVD and the distances ``<metric>_n_inf``, the
    number of infinite values, which are left out of that mean (an empty mask would otherwise
    make the mean inf). A mean with no finite value to average is NaN.

    mean(m) = sum of finite m over cases / number of finite m
    """
    values: dict[str, dict[str, list[float]]] = {}
    for case in per_case:
        for name, metrics in case.items():
            per_metric = values.setdefault(name, {m: [] for m in METRIC_NAMES})
            for m, v in metrics.as_dict().items():
                per_metric[m].append(v)

    result: dict[str, dict[str, float]] = {}
    for name, per_metric in values.items():
        summary: dict[str, float] = {"n_cases": len(per_metric["dsc"])}
        for m in METRIC_NAMES:
            arr = np.asarray(per_metric[m], dtype=np.float64)
            finite = arr[np.isfinite(arr)]
            summary[m] = float(finite.mean()) if finite.size else math.nan
            if m in _INF_METRICS:
                summary[f"{m}_n_inf"] = int(np.count_nonzero(np.isinf(arr)))
        result[name] = summary
    return result
