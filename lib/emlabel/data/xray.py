"""Synthetic chest-X-ray-like 2D pictures with a known label map, for the 2D demo.

A posteroanterior (PA) view: the patient faces the viewer, so the patient's left lung is on
the image's right. The picture is a bright thorax ellipse with curved rib stripes and a
brighter spine band, two dark lungs, and a bright heart between them, low and to the
patient's left; the heart is painted over the lungs (labels never overlap). Arrays are
``[row, column]`` (PIL's ``fromarray`` order); MONAI's ``LoadImage`` reads the saved PNG
transposed (``[width, height]``), for the image and its labels alike.

Label errors reuse :mod:`emlabel.data.corruptions`, which names structures by
``PHANTOM_LABELS``: a structure here is addressed by the phantom name with the same value
(1 = "liver", 2 = "spleen", 3 = "kidney") and the records are renamed back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from emlabel.data import corruptions
from emlabel.data.phantoms import PHANTOM_LABELS

XRAY_LABELS: tuple[str, ...] = ("background", "lung_left", "lung_right", "heart")
"""Index = label value."""

LUNG_LEFT, LUNG_RIGHT, HEART = range(1, 4)

PIXEL_SPACING: tuple[float, float] = (1.0, 1.0)
"""A PNG holds no spacing; corruptions measure their sizes (mm) in pixels."""

# Mean grey level (0..255) per tissue; each picture jitters them a little.
GREY: dict[str, float] = {"air": 12.0, "body": 135.0, "lung": 55.0, "heart": 185.0}
RIB_GREY = 28.0  # added on the ribs (bone is brighter on a radiograph)
SPINE_GREY = 35.0  # added on the spine band behind the mediastinum

XRAY_CORRUPTIONS: tuple[str, ...] = (
    "erode_or_dilate",
    "drop_structure",
    "shift_structure",
    "swap_structures",
    "add_spurious_blobs",
)
"""Kinds of :mod:`~emlabel.data.corruptions` that make sense here (no lesion to relabel)."""


@dataclass(frozen=True, kw_only=True)
class XRayOptions:
    """Size and image quality of a synthetic X-ray."""

    shape: tuple[int, int] = (128, 128)
    """Pixels: rows, columns."""
    noise: float = 6.0
    """Standard deviation of the Gaussian noise, in grey levels."""
    blur: float = 1.0
    """Gaussian blur sigma in pixels (the soft edges of a projection)."""

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or any(int(s) != s or s < 32 for s in self.shape):
            raise ValueError(f"shape must be two integers >= 32, got {self.shape!r}")
        for name in ("noise", "blur"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, eq=False)
class XRay:
    """A synthetic radiograph and its exact label map."""

    image: np.ndarray  # uint8 grey, shape = options.shape
    label: np.ndarray  # uint8, values 0..3 per XRAY_LABELS


def make_xray(*, seed: int, options: XRayOptions = XRayOptions()) -> XRay:
    """Build one X-ray; the same seed and options always give the same arrays."""
    rng = np.random.default_rng(seed)
    rows, cols = (int(s) for s in options.shape)
    # Normalised coordinates: u across (-1 left edge .. 1 right edge), v down (-1 top .. 1).
    v = ((np.arange(rows) - (rows - 1) / 2) / (rows / 2))[:, None]
    u = ((np.arange(cols) - (cols - 1) / 2) / (cols / 2))[None, :]

    body = _ellipse(u, v, (rng.uniform(-0.02, 0.02), 0.08), (rng.uniform(0.78, 0.86), 0.95), 0)
    label = np.zeros((rows, cols), np.uint8)
    for value, side in ((LUNG_RIGHT, -1.0), (LUNG_LEFT, 1.0)):  # patient's right = image left
        center = (side * rng.uniform(0.34, 0.40), rng.uniform(-0.10, 0.0))
        axes = (rng.uniform(0.21, 0.26), rng.uniform(0.50, 0.60))
        label[_ellipse(u, v, center, axes, -side * rng.uniform(5, 12)) & body] = value
    heart_center = (rng.uniform(0.06, 0.14), rng.uniform(0.28, 0.36))
    heart_axes = (rng.uniform(0.22, 0.27), rng.uniform(0.18, 0.23))
    label[_ellipse(u, v, heart_center, heart_axes, -rng.uniform(20, 35)) & body] = HEART

    image = _image(rng, options, u, v, body, label)
    return XRay(image=image, label=label)


def _ellipse(
    u: np.ndarray,
    v: np.ndarray,
    center: tuple[float, float],
    axes: tuple[float, float],
    tilt_deg: float,
) -> np.ndarray:
    """Mask of a rotated ellipse in normalised coordinates."""
    t = math.radians(tilt_deg)
    du, dv = u - center[0], v - center[1]
    a = (du * math.cos(t) + dv * math.sin(t)) / axes[0]
    b = (-du * math.sin(t) + dv * math.cos(t)) / axes[1]
    return np.asarray(a**2 + b**2 <= 1.0)


def _image(
    rng: np.random.Generator,
    options: XRayOptions,
    u: np.ndarray,
    v: np.ndarray,
    body: np.ndarray,
    label: np.ndarray,
) -> np.ndarray:
    """Grey picture: tissues, ribs (curved stripes), spine band, blur, noise; uint8."""

    def grey(name: str) -> float:
        return GREY[name] + rng.uniform(-8, 8)

    image = np.full(label.shape, grey("air"), np.float64)
    image[body] = grey("body")
    image[(label == LUNG_LEFT) | (label == LUNG_RIGHT)] = grey("lung")
    image[label == HEART] = grey("heart")
    n_ribs, phase = rng.uniform(5.5, 7.0), rng.uniform(0, 2 * math.pi)
    curve = v - 0.35 * u**2  # ribs bend down towards the sides
    ribs = np.cos(2 * math.pi * n_ribs * curve / 2 + phase) > 0.55
    image += RIB_GREY * (ribs & body & (v < 0.55) & (label != HEART))
    image += SPINE_GREY * (body & (np.abs(u) < 0.07))
    if options.blur > 0:
        image = ndimage.gaussian_filter(image, sigma=options.blur, mode="nearest")
    image += rng.normal(0.0, options.noise, label.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def corrupt_xray_label(
    label: np.ndarray, *, rng: np.random.Generator, n_errors: int | None = None
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Apply ``n_errors`` (default: random 1-3) different kinds of annotation error.

    Kinds come from :data:`XRAY_CORRUPTIONS` in random order; a swap exchanges the lungs
    (a left/right mix-up). Returns the noisy label and one record per error, naming the
    X-ray's structures.
    """
    if n_errors is None:
        n_errors = int(rng.integers(1, 4))
    if not 1 <= n_errors <= len(XRAY_CORRUPTIONS):
        raise ValueError(f"n_errors must be 1..{len(XRAY_CORRUPTIONS)}, got {n_errors}")
    out, records = label.copy(), []
    for kind in rng.permutation(XRAY_CORRUPTIONS):
        if len(records) == n_errors:
            break
        present = [v for v in (LUNG_LEFT, LUNG_RIGHT, HEART) if (out == v).any()]
        if kind == "swap_structures" and not {LUNG_LEFT, LUNG_RIGHT} <= set(present):
            continue  # a lung was dropped by an earlier error
        if not present:
            continue
        out, record = _corrupt_once(str(kind), out, rng, present)
        records.append(record)
    return out, records


def _corrupt_once(
    kind: str, label: np.ndarray, rng: np.random.Generator, present: list[int]
) -> tuple[np.ndarray, dict[str, Any]]:
    """One error of ``kind`` on one of the ``present`` structures (values)."""
    function = corruptions.CORRUPTIONS[kind]
    if kind == "swap_structures":
        pair = (PHANTOM_LABELS[LUNG_LEFT], PHANTOM_LABELS[LUNG_RIGHT])
        out, record = function(label, rng=rng, spacing=PIXEL_SPACING, structures=pair)
    else:
        structure = PHANTOM_LABELS[int(rng.choice(present))]
        out, record = function(label, rng=rng, spacing=PIXEL_SPACING, structure=structure)
    return out, _renamed(record)


def _renamed(record: dict[str, Any]) -> dict[str, Any]:
    """A corruption record with phantom names replaced by the X-ray's (same value)."""
    names = dict(zip(PHANTOM_LABELS, XRAY_LABELS, strict=False))
    return {k: names.get(v, v) if k in ("structure", "with") else v for k, v in record.items()}
