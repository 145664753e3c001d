"""Synthetic CT-like abdominal phantoms with a known label map, for demos and tests.

The anatomy is built in physical millimetres (voxel centres times spacing), so an
anisotropic spacing gives physically round vessels and organs. Every structure's size is a
fraction of the field of view, so small test shapes still hold every structure, and each
structure is painted as the ``k`` free voxels closest to an ellipsoid's centre: its voxel count
is exact and structures never overlap (except the lesion, which is carved out of the liver).

Orientation follows RAS (+x = patient's right, +y = anterior, +z = superior): the liver sits at
+x, the spleen at -x, the spine and kidneys posterior (-y).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

PHANTOM_LABELS: tuple[str, ...] = (
    "background",
    "liver",
    "spleen",
    "kidney",
    "aorta",
    "adrenal",
    "lesion",
)  # index = label value

LIVER, SPLEEN, KIDNEY, AORTA, ADRENAL, LESION = range(1, 7)

# Fraction of the whole volume per structure: (low, high), drawn uniformly per phantom.
FRACTIONS: dict[int, tuple[float, float]] = {
    LIVER: (0.09, 0.11),
    SPLEEN: (0.015, 0.02),
    KIDNEY: (0.008, 0.012),  # both kidneys together
    AORTA: (0.004, 0.006),
    ADRENAL: (0.0004, 0.0006),
    LESION: (0.002, 0.004),
}
MIN_VOXELS = 3  # every structure keeps at least this many voxels, whatever the shape

# Mean HU per tissue; each phantom jitters them by a few HU.
HU: dict[str, float] = {
    "air": -1000.0,
    "fat": -100.0,
    "soft": 40.0,
    "bone": 450.0,
    "liver": 60.0,
    "spleen": 50.0,
    "kidney": 30.0,
    "aorta": 200.0,
    "adrenal": 40.0,
    "lesion": 15.0,
}
HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True, kw_only=True)
class PhantomOptions:
    """Size, sampling and image quality of a phantom."""

    shape: tuple[int, int, int] = (64, 64, 48)
    """Voxels along x, y, z."""
    spacing: tuple[float, float, float] = (1.6, 1.6, 2.5)
    """Voxel size in mm along x, y, z (anisotropic, like a thick-slice CT)."""
    noise_hu: float = 20.0
    """Standard deviation of the Gaussian image noise, in HU."""
    bias_hu: float = 40.0
    """Peak amplitude of the smooth low-frequency additive bias field inside the body, in HU."""

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(s) != s or s < 8 for s in self.shape):
            raise ValueError(f"shape must be three integers >= 8, got {self.shape!r}")
        if len(self.spacing) != 3 or any(not (math.isfinite(s) and s > 0) for s in self.spacing):
            raise ValueError(f"spacing must be three positive numbers (mm), got {self.spacing!r}")
        for name in ("noise_hu", "bias_hu"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, eq=False)
class Phantom:
    """A synthetic CT volume and its exact label map."""

    image: np.ndarray  # float32 HU, shape = options.shape
    label: np.ndarray  # uint8, values 0..6 per PHANTOM_LABELS
    spacing: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-to-world matrix: diag(spacing), origin 0 (RAS)."""
        return np.diag([*map(float, self.spacing), 1.0])


@dataclass(frozen=True)
class _Grid:
    """Voxel-centre coordinates in mm, centred on the volume, as broadcastable 1-D axes."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = []
        for dim, (n, s) in enumerate(zip(self.shape, self.spacing, strict=True)):
            coords = (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * s
            view = [1, 1, 1]
            view[dim] = n
            out.append(coords.reshape(view))
        return out[0], out[1], out[2]

    @property
    def half(self) -> np.ndarray:
        """Half the field of view in mm per axis."""
        return np.asarray(self.shape, float) * np.asarray(self.spacing, float) / 2.0

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def voxel_volume(self) -> float:
        return float(np.prod(self.spacing))


@dataclass(frozen=True)
class _Prior:
    """Where and how an ellipsoidal organ sits, relative to the body's inner half-axes."""

    center: tuple[float, float, float]
    jitter: tuple[float, float, float]
    ratios: tuple[float, float, float]  # relative semi-axes (shape only; size comes from k)
    tilt_deg: tuple[float, float, float]  # max rotation about z, y, x


LIVER_PRIOR = _Prior((0.30, 0.22, 0.20), (0.06, 0.06, 0.10), (0.60, 0.50, 0.75), (20, 10, 10))
SPLEEN_PRIOR = _Prior((-0.55, -0.05, 0.25), (0.06, 0.08, 0.10), (0.25, 0.40, 0.45), (30, 10, 10))
KIDNEY_PRIOR = _Prior((0.45, -0.45, -0.25), (0.05, 0.05, 0.10), (0.22, 0.28, 0.55), (15, 10, 10))


def make_phantom(*, seed: int, options: PhantomOptions = PhantomOptions()) -> Phantom:
    """Build one phantom; the same seed and options always give the same arrays."""
    rng = np.random.default_rng(seed)
    grid = _Grid(tuple(int(s) for s in options.shape), tuple(float(s) for s in options.spacing))
    body, inner, spine = _body(grid, rng)
    label = np.zeros(grid.shape, np.uint8)
    occupied = spine.copy()
    counts = {c: _count(grid, rng, c) for c in FRACTIONS}
    counts[LIVER] += counts[LESION]  # the lesion is carved out of the liver afterwards

    aorta = _aorta(grid, rng, _free(inner, occupied), counts[AORTA], spine)
    _paint(label, occupied, aorta, AORTA)
    scale = _body_scale(grid, inner)
    liver = _place(grid, rng, _free(inner, occupied), counts[LIVER], LIVER_PRIOR, scale)
    _paint(label, occupied, liver, LIVER)
    spleen = _place(grid, rng, _free(inner, occupied), counts[SPLEEN], SPLEEN_PRIOR, scale)
    _paint(label, occupied, spleen, SPLEEN)
    kidneys, adrenal_side = _kidneys(grid, rng, inner, occupied, counts[KIDNEY], scale)
    _paint(label, occupied, kidneys, KIDNEY)
    adrenal = _adrenal(grid, rng, _free(inner, occupied), counts[ADRENAL], kidneys, adrenal_side)
    _paint(label, occupied, adrenal, ADRENAL)
    label[_lesion(grid, rng, label == LIVER, counts[LESION])] = LESION

    image = _image(grid, rng, options, label, body, inner, spine)
    return Phantom(image=image, label=label, spacing=grid.spacing)


def _count(grid: _Grid, rng: np.random.Generator, structure: int) -> int:
    """Voxel count of one structure: a random fraction of the volume, at least MIN_VOXELS."""
    low, high = FRACTIONS[structure]
    return max(MIN_VOXELS, round(rng.uniform(low, high) * grid.size))


def _free(inner: np.ndarray, occupied: np.ndarray) -> np.ndarray:
    """Inner-body voxels at least one voxel away from anything already placed."""
    return inner & ~ndimage.binary_dilation(occupied)


def _paint(label: np.ndarray, occupied: np.ndarray, mask: np.ndarray, value: int) -> None:
    label[mask] = value
    occupied |= mask


def _body(grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body (elliptic cylinder along z), its inside without the fat rim, and the spine."""
    x, y, _ = grid.axes
    half = grid.half
    bx, by = half[0] * rng.uniform(0.86, 0.94), half[1] * rng.uniform(0.72, 0.80)
    cx, cy = rng.uniform(-0.02, 0.02) * half[0], rng.uniform(-0.02, 0.02) * half[1]
    radius = np.sqrt(((x - cx) / bx) ** 2 + ((y - cy) / by) ** 2)
    rim = rng.uniform(0.07, 0.10)
    column = np.broadcast_to(radius, grid.shape)
    body = column <= 1.0
    inner = column <= 1.0 - rim
    spine_r = 0.16 * by * (1.0 - rim)
    spine_y = cy - 0.62 * by * (1.0 - rim)
    spine = np.broadcast_to(np.hypot(x - cx, y - spine_y) <= spine_r, grid.shape)
    return body, inner & ~spine, spine.copy()


def _body_scale(grid: _Grid, inner: np.ndarray) -> np.ndarray:
    """Half-extents in mm of the inner body (x, y) and of the volume (z), with its centre."""
    idx = np.nonzero(inner.any(axis=2))
    spacing = np.asarray(grid.spacing)
    lo = np.array([idx[0].min(), idx[1].min()]) * spacing[:2]
    hi = np.array([idx[0].max(), idx[1].max()]) * spacing[:2]
    centre = (lo + hi) / 2.0 - (np.asarray(grid.shape[:2]) - 1) / 2.0 * spacing[:2]
    half = (hi - lo) / 2.0 + spacing[:2] / 2.0
    return np.array([[half[0], half[1], grid.half[2]], [centre[0], centre[1], 0.0]])


def _rotation(rng: np.random.Generator, tilt_deg: tuple[float, float, float]) -> np.ndarray:
    angles = [rng.uniform(-t, t) for t in tilt_deg]
    return Rotation.from_euler("zyx", angles, degrees=True).as_matrix()


def _ellipsoid_radius(
    grid: _Grid, center: np.ndarray, semi_axes: np.ndarray, rotation: np.ndarray
) -> np.ndarray:
    """Normalised ellipsoidal radius (1 on the surface) of every voxel, in mm space."""
    rel = [axis - c for axis, c in zip(grid.axes, center, strict=True)]
    total = np.zeros(grid.shape)
    for k in range(3):
        q = rel[0] * rotation[0, k] + rel[1] * rotation[1, k] + rel[2] * rotation[2, k]
        total += (q / semi_axes[k]) ** 2
    return np.sqrt(total)


def _take_smallest(radius: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """Mask of the ``k`` allowed voxels with the smallest radius (all of them if fewer)."""
    flat = np.flatnonzero(allowed)
    mask = np.zeros(radius.shape, bool)
    if flat.size <= k:
        mask.flat[flat] = True
        return mask
    values = radius.flat[flat]
    mask.flat[flat[np.argpartition(values, k - 1)[:k]]] = True
    return mask


def _take_connected(radius: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """Like :func:`_take_smallest` but one face-connected piece: keep the largest piece, then
    regrow it ring by ring (smallest radius first) until it has ``k`` voxels again."""
    mask = _take_smallest(radius, allowed, k)
    pieces, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(pieces.ravel())[1:]
    mask = pieces == 1 + int(np.argmax(sizes))
    deficit = k - int(np.count_nonzero(mask))
    while deficit > 0:
        ring = ndimage.binary_dilation(mask) & allowed & ~mask
        if not ring.any():
            break
        grow = _take_smallest(radius, ring, deficit)
        mask |= grow
        deficit -= int(np.count_nonzero(grow))
    return mask


def _semi_axes(ratios: np.ndarray, k: int, voxel_volume: float) -> np.ndarray:
    """Scale ``ratios`` so the ellipsoid's volume is ``k`` voxels."""
    volume = k * voxel_volume
    scale = (volume / (4.0 / 3.0 * math.pi * float(np.prod(ratios)))) ** (1.0 / 3.0)
    return ratios * scale


def _place(
    grid: _Grid,
    rng: np.random.Generator,
    free: np.ndarray,
    k: int,
    prior: _Prior,
    scale: np.ndarray,
    *,
    tries: int = 25,
) -> np.ndarray:
    """Try random ellipsoids from ``prior``; keep the first that fits the free space well."""
    half, centre = scale
    best: tuple[float, np.ndarray] | None = None
    for _ in range(tries):
        center = centre + (np.asarray(prior.center) + rng.uniform(-1, 1, 3) * prior.jitter) * half
        ratios = np.asarray(prior.ratios) * half * rng.uniform(0.85, 1.15, 3)
        axes = _semi_axes(ratios, k, grid.voxel_volume)
        radius = _ellipsoid_radius(grid, center, axes, _rotation(rng, prior.tilt_deg))
        fit = np.count_nonzero(free & (radius <= 1.0)) / k
        if best is None or fit > best[0]:
            best = (fit, radius)
        if fit >= 0.92:
            break
    assert best is not None
    return _take_connected(best[1], free, k)


def _aorta(
    grid: _Grid, rng: np.random.Generator, free: np.ndarray, k: int, spine: np.ndarray
) -> np.ndarray:
    """A tube along z just anterior-left of the spine, with a gently wandering centreline."""
    x, y, z = grid.axes
    spacing = np.asarray(grid.spacing)
    sx = np.nonzero(spine.any(axis=(1, 2)))[0]
    sy = np.nonzero(spine.any(axis=(0, 2)))[0]
    spine_cx = ((sx.min() + sx.max()) / 2 - (grid.shape[0] - 1) / 2) * spacing[0]
    spine_front = (sy.max() - (grid.shape[1] - 1) / 2) * spacing[1]
    area = k * grid.voxel_volume / (grid.shape[2] * spacing[2])
    radius = math.sqrt(area / math.pi)
    cx = spine_cx - rng.uniform(0.3, 0.8) * radius
    cy = spine_front + spacing[1] + radius * rng.uniform(1.2, 1.6)
    phase, wobble = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.3) * radius
    drift = wobble * np.sin(math.pi * z / grid.half[2] + phase)
    dist = np.sqrt((x - cx - drift) ** 2 + (y - cy + 0.5 * drift) ** 2) / radius
    return _take_connected(np.broadcast_to(dist, grid.shape), free, k)


def _kidneys(
    grid: _Grid,
    rng: np.random.Generator,
    inner: np.ndarray,
    occupied: np.ndarray,
    k: int,
    scale: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Two ellipsoidal kidneys either side of the spine; also returns the adrenal's side."""
    right = max(MIN_VOXELS, round(k * rng.uniform(0.45, 0.55)))
    sizes = {1: right, -1: max(MIN_VOXELS, k - right)}
    mask = np.zeros(grid.shape, bool)
    for side, size in sizes.items():
        cx, cy, cz = KIDNEY_PRIOR.center
        prior = dataclasses.replace(KIDNEY_PRIOR, center=(side * cx, cy, cz))
        mask |= _place(grid, rng, _free(inner, occupied | mask), size, prior, scale)
    return mask, int(rng.choice([1, -1]))


def _adrenal(
    grid: _Grid,
    rng: np.random.Generator,
    free: np.ndarray,
    k: int,
    kidneys: np.ndarray,
    side: int,
) -> np.ndarray:
    """A tiny flat gland on top of (superior-medial to) one kidney."""
    x, _, _ = grid.axes
    one = kidneys & ((x > 0) if side > 0 else (x < 0))
    if not one.any():
        one = kidneys
    idx = np.argwhere(one)
    spacing = np.asarray(grid.spacing)
    offset = (np.asarray(grid.shape) - 1) / 2.0
    top = idx[idx[:, 2] == idx[:, 2].max()].mean(axis=0)
    top_mm = (top - offset) * spacing
    best: tuple[float, np.ndarray] | None = None
    for _ in range(10):
        ratios = np.array([0.5, 1.0, 1.0]) * rng.uniform(0.8, 1.2, 3)
        axes = _semi_axes(ratios, k, grid.voxel_volume)
        center = top_mm + np.array([-side * axes[0], 0.0, axes[2] + spacing[2]])
        center += rng.uniform(-1.0, 1.0, 3) * spacing
        radius = _ellipsoid_radius(grid, center, axes, _rotation(rng, (25, 10, 10)))
        fit = np.count_nonzero(free & (radius <= 1.0)) / k
        if best is None or fit > best[0]:
            best = (fit, radius)
        if fit >= 0.92:
            break
    assert best is not None
    return _take_connected(best[1], free, k)


def _lesion(grid: _Grid, rng: np.random.Generator, liver: np.ndarray, k: int) -> np.ndarray:
    """A small ellipsoid deep inside the liver, so the liver fully surrounds it."""
    depth = ndimage.distance_transform_edt(liver, sampling=grid.spacing)
    margin = float(np.linalg.norm(grid.spacing))  # a whole 26-neighbourhood inside the liver
    axes = _semi_axes(rng.uniform(0.8, 1.2, 3), k, grid.voxel_volume)
    deep = np.argwhere(depth >= float(axes.max()) + margin)
    if deep.size == 0:
        deep = np.argwhere(depth == depth.max())
    pick = deep[rng.integers(len(deep))]
    center = (pick - (np.asarray(grid.shape) - 1) / 2.0) * np.asarray(grid.spacing)
    radius = _ellipsoid_radius(grid, center, axes, _rotation(rng, (90, 90, 90)))
    allowed = depth > margin
    if np.count_nonzero(allowed) < k:
        allowed = liver
    return _take_connected(radius, allowed, k)


def _image(
    grid: _Grid,
    rng: np.random.Generator,
    options: PhantomOptions,
    label: np.ndarray,
    body: np.ndarray,
    inner: np.ndarray,
    spine: np.ndarray,
) -> np.ndarray:
    """HU image: tissue values, perirenal fat, slight blur, smooth bias field and noise."""

    def hu(name: str) -> float:
        return HU[name] + rng.uniform(-5, 5)

    image = np.full(grid.shape, HU["air"], np.float32)
    image[body] = hu("fat")
    image[inner] = hu("soft")
    image[spine] = hu("bone")
    retro = (label == KIDNEY) | (label == ADRENAL)
    near = ndimage.distance_transform_edt(~retro, sampling=grid.spacing) <= 3.0
    image[near & inner & (label == 0)] = hu("fat")
    for value, name in enumerate(PHANTOM_LABELS[1:], start=1):
        image[label == value] = hu(name)
    image = ndimage.gaussian_filter(image, sigma=0.5, mode="nearest")
    image += _bias_field(grid, rng, options.bias_hu) * body
    image += rng.normal(0.0, options.noise_hu, grid.shape).astype(np.float32)
    return np.clip(image, HU_MIN, HU_MAX).astype(np.float32)


def _bias_field(grid: _Grid, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth field (a few cosines with wavelengths longer than the field of view)."""
    field = np.zeros(grid.shape, np.float32)
    if amplitude == 0:
        return field
    for _ in range(3):
        wave = rng.uniform(0.2, 0.7, 3) * math.pi / grid.half * rng.choice([-1, 1], 3)
        phase = rng.uniform(0, 2 * math.pi)
        x, y, z = grid.axes
        field += np.cos(wave[0] * x + wave[1] * y + wave[2] * z + phase).astype(np.float32)
    peak = float(np.abs(field).max())
    return field * (amplitude / peak if peak > 0 else 0.0)
