"""Label errors for any binary mask, 2D or 3D: the learned verifier's "wrong" examples.

:mod:`emlabel.data.corruptions` makes errors of the demo phantoms' label map; the verifier
must learn on any data, so these work on one structure's boolean mask, with sizes relative to
the structure: ``r`` is its equivalent radius, ``(n / v_d)^(1/d)`` for ``n`` voxels in ``d``
dimensions (``v_d`` the unit ball's volume: pi in 2D, 4 pi / 3 in 3D). Every function takes
``(mask, rng)`` and returns a new mask; none modifies its input. Whether the result is wrong
is decided by its Dice to the original, not by its kind (a 1-voxel dilation of a large organ
is still a right label).

====================== ===========================================================
kind                   what it does
====================== ===========================================================
``boundary``           erode or dilate by ``k`` in [1, max(1, 0.3 r)] voxels
``shift``              translate by 0.15-0.6 r voxels in a random direction
``drop``               empty mask (the structure forgotten)
``blob``               add a ball of radius 0.2-0.6 r within 3 r of the structure
``cut``                remove everything beyond a random plane through the mask
                       (keeps 40-85% of it)
``wobble``             threshold ``gaussian(mask, s) + a * noise`` at 0.5 (noise: unit-variance
                       smoothed Gaussian field; ``a`` in [0.1, 0.6]): uneven boundaries,
                       from hurried to badly drawn
====================== ===========================================================

``mild_wobble`` is ``wobble`` with ``a`` in [0.02, 0.1]: the boundary jitter of a careful
annotator, a "right" example that keeps the network from calling every change wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage

Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def equivalent_radius(mask: np.ndarray) -> float:
    """``(n / v_d)^(1/d)`` voxels; 1.0 for an empty mask."""
    n = int(np.count_nonzero(mask))
    if n == 0:
        return 1.0
    d = mask.ndim
    unit_ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1)
    return (n / unit_ball) ** (1.0 / d)


def boundary(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(1, max(1, round(0.3 * equivalent_radius(mask))) + 1))
    if rng.random() < 0.5:
        return ndimage.binary_dilation(mask, iterations=k)
    eroded = ndimage.binary_erosion(mask, iterations=k)
    return eroded if eroded.any() else ndimage.binary_dilation(mask, iterations=k)


def shift(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    length = rng.uniform(0.15, 0.6) * equivalent_radius(mask)
    direction = rng.normal(size=mask.ndim)
    steps = np.round(direction / np.linalg.norm(direction) * max(length, 1.0)).astype(int)
    out = np.zeros_like(mask)
    src = tuple(slice(max(0, -s), mask.shape[a] - max(0, s)) for a, s in enumerate(steps))
    dst = tuple(slice(max(0, s), mask.shape[a] - max(0, -s)) for a, s in enumerate(steps))
    out[dst] = mask[src]
    return out


def drop(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.zeros_like(mask)


def blob(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = equivalent_radius(mask)
    radius = max(1.0, rng.uniform(0.2, 0.6) * r)
    points = np.argwhere(mask)
    centre = points[rng.integers(len(points))] if len(points) else np.array(mask.shape) // 2
    centre = centre + rng.normal(size=mask.ndim) * r * 1.5
    centre = np.clip(centre, 0, np.array(mask.shape) - 1)
    grid = np.indices(mask.shape, sparse=True)
    distance2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return mask | (distance2 <= radius**2)


def cut(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    points = np.argwhere(mask)
    if len(points) < 2:
        return drop(mask, rng)
    normal = rng.normal(size=mask.ndim)
    projection = points @ normal
    threshold = np.quantile(projection, rng.uniform(0.4, 0.85))
    out = np.zeros_like(mask)
    kept = points[projection <= threshold]
    out[tuple(kept.T)] = True
    return out


def _wobble(mask: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    sigma = max(1.0, 0.25 * equivalent_radius(mask))
    noise = ndimage.gaussian_filter(rng.normal(size=mask.shape), sigma)
    noise /= noise.std() + 1e-8
    smooth = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)
    return (smooth + amplitude * noise) >= 0.5


def wobble(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _wobble(mask, rng, rng.uniform(0.1, 0.6))


def mild_wobble(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _wobble(mask, rng, rng.uniform(0.02, 0.1))


CORRUPTIONS: dict[str, Corruption] = {
    "boundary": boundary,
    "shift": shift,
    "drop": drop,
    "blob": blob,
    "cut": cut,
    "wobble": wobble,
}
"""The error kinds, by name (module docstring)."""
