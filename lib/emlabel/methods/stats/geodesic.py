"""Labels grown from the clicks to the known size along the image: no training needed.

For a structure with inside-clicks S and a known size A, the label is the n = round(A / v)
voxels closest to S in the image-aware geodesic distance

  D(p) = min over paths S -> p of  sum over steps (a -> b) of  h_ab * (1 + lambda |x_a - x_b| / s)

with h_ab the step length in mm along the axis (the spacing), x the image (first channel),
s its standard deviation and lambda = ``intensity_weight`` (0: plain distance in mm, a blob of
the right size around the clicks). The path cost grows where the path crosses an intensity
edge, so the region spreads inside the structure first. Outside-clicks of the structure are
never taken. Structures are grown smallest first; a voxel belongs to the first structure
that claims it.

Why: ``bench/stats.py`` measured that the spec's loss trains networks whose masks are
diffuse (argmax 7-20% of the target), while these labels, from the same area and 5 clicks,
are 0.72 Dice on the phantom lesions and 0.53 on BU-BIL cells (the network's area-matched
labels: 0.25 and 0.22), and a network trained on them reaches 0.72 / 0.30 test Dice (full
supervision 0.83 / 0.42). Written by hand (scipy's Dijkstra on the voxel grid graph): MONAI has
no geodesic distance transform, and FastGeodis is not a dependency.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import dijkstra

from emlabel.methods.stats.targets import ImageTargets


def grid_graph(
    image: np.ndarray, spacing: tuple[float, ...], intensity_weight: float
) -> sparse.csr_matrix:
    """Sparse symmetric graph of the voxel grid's axis neighbours with the step costs above."""
    shape = image.shape
    index = np.arange(image.size).reshape(shape)
    scale = float(image.std()) or 1.0
    rows, cols, weights = [], [], []
    for axis in range(image.ndim):
        lo = [slice(None)] * image.ndim
        hi = [slice(None)] * image.ndim
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        a, b = index[tuple(lo)].ravel(), index[tuple(hi)].ravel()
        step = np.abs(image[tuple(lo)] - image[tuple(hi)]).ravel() / scale
        w = float(spacing[axis]) * (1.0 + intensity_weight * step)
        rows += [a, b]
        cols += [b, a]
        weights += [w, w]
    return sparse.csr_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
        shape=(image.size, image.size),
    )


def geodesic_distance(
    image: np.ndarray,
    seeds: np.ndarray,
    spacing: tuple[float, ...],
    *,
    intensity_weight: float = 3.0,
) -> np.ndarray:
    """D(p) of every voxel of ``image`` ``[*spatial]`` from the voxel coordinates ``seeds``
    ``[n, ndim]`` (n >= 1); same shape as the image, 0 at the seeds."""
    if seeds.ndim != 2 or seeds.shape[0] == 0 or seeds.shape[1] != image.ndim:
        raise ValueError(f"seeds must be [n >= 1, {image.ndim}], got {tuple(seeds.shape)}")
    graph = grid_graph(image.astype(np.float64), spacing, intensity_weight)
    return _distance_on(graph, seeds, image.shape)


def _distance_on(graph: sparse.csr_matrix, seeds: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Shortest path length on ``graph`` from the nearest of ``seeds`` to every voxel."""
    flat = np.unique(np.ravel_multi_index(tuple(seeds.T), shape))
    return dijkstra(graph, indices=flat, min_only=True).reshape(shape)


def geodesic_area_labels(
    image: torch.Tensor, targets: ImageTargets, *, intensity_weight: float = 3.0
) -> torch.Tensor | None:
    """Label map ``[*spatial]`` (long) of an image ``[C, *spatial]`` grown from its clicks.

    Every structure with both a known size and inside-clicks gets its n nearest voxels (see
    the module docstring); the rest is background. None when no structure has both.
    """
    targets.check_shape(image.shape[1:])
    x = image[0].detach().cpu().numpy()
    labels = np.zeros(x.shape, dtype=np.int64)
    claimed = np.zeros(x.shape, dtype=bool)
    growable = [st for st in targets.structures if st.area_mm is not None and st.clicks_in.shape[0]]
    if not growable:
        return None
    graph = grid_graph(x.astype(np.float64), targets.spacing, intensity_weight)  # once per image
    for st in sorted(growable, key=lambda st: float(st.area_mm)):
        distance = _distance_on(graph, st.clicks_in.long().numpy(), x.shape)
        if st.clicks_out.shape[0]:
            distance[tuple(st.clicks_out.long().numpy().T)] = np.inf
        distance[claimed] = np.inf
        n = min(round(float(st.area_mm) / targets.voxel_volume), int(np.isfinite(distance).sum()))
        take = np.argsort(distance, axis=None, kind="stable")[:n]
        labels.flat[take] = st.structure
        claimed.flat[take] = True
    return torch.from_numpy(labels)
