"""Rotation/flip augmentation, its exact undo, and AIDE's consistency target.

Augmentation of one item: rotate by theta ~ U(-max, max) degrees in the plane of the first two
spatial axes (for 3D ``[N, C, X, Y, Z]`` that is the axial X-Y plane, MONAI's layout), then
flip the second spatial axis (the horizontal axis of a 2D ``[H, W]`` image) with probability
p. The undo applies the inverse in reverse order: unflip, then rotate by -theta, so that a
prediction made on the augmented copy lands on the original pixel grid.

Implementation: ``torch.nn.functional.affine_grid`` + ``grid_sample`` (bilinear,
``align_corners=False``, zero padding), batched with a different angle per item, and
``torch.flip`` for the flips (exact). MONAI's ``Rotate``/``Affine`` transforms work on one
channel-first item at a time; the batched torch form keeps one call per batch. The rotation is
built in pixel units, ``A = S^-1 R S`` with ``S = diag(size / 2)`` mapping the normalised grid
coordinates to pixels, so a non-square image is rotated without shear (in-plane pixels are
assumed square). Items with theta = 0 are returned unresampled (exactly).

Padding: pixels the rotated copy did not see get 0 after the undo. They do not vote in the
consistency target: q is the mean over the copies that saw the pixel (the undone rotation
of a ones image is above 0.5 there; at the edge of a copy's view bilinear interpolation
blends real and padded logits, so the outermost ring counts only where mostly real).
Averaging the padded
zero logits in as uniform distributions instead pulls q towards 0.5 at the image corners,
which pushes every network trained on it towards foreground there (with +-60 degree
rotations of a patch, up to a third of its pixels; bench/aide.py BU-BIL over-segmented).
A pixel no copy saw gets the uniform distribution, hence confidence weight 0.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from emlabel.methods.aide.options import AIDEOptions
from emlabel.methods.aide.precision import autocast

FLIP_AXIS = 1
"""Spatial axis (0-based, after the channel axis) flipped by the augmentation."""


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """The random transform of each item of a batch."""

    angles_deg: torch.Tensor
    """``[B]`` float, rotation angle in degrees in the plane of spatial axes 0 and 1."""
    flips: torch.Tensor
    """``[B]`` bool, whether spatial axis :data:`FLIP_AXIS` is flipped."""


def sample_augment(
    batch_size: int, *, max_rotation_deg: float, flip_prob: float, rng: torch.Generator
) -> AugmentParams:
    """Draw theta ~ U(-max, max) degrees and flip ~ Bernoulli(p) for each of ``batch_size`` items."""
    u = torch.rand(batch_size, generator=rng, dtype=torch.float64)
    angles = (2.0 * u - 1.0) * max_rotation_deg
    flips = torch.rand(batch_size, generator=rng, dtype=torch.float64) < flip_prob
    return AugmentParams(angles_deg=angles.float(), flips=flips)


def _rotation_theta(angles_deg: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """``[B, n, n+1]`` affine_grid matrices rotating spatial axes (0, 1) by the angles, in pixels."""
    n = len(spatial)
    rad = angles_deg.double() * (math.pi / 180.0)
    rot = torch.eye(n, dtype=torch.float64).repeat(len(rad), 1, 1)
    rot[:, 0, 0] = torch.cos(rad)
    rot[:, 0, 1] = -torch.sin(rad)
    rot[:, 1, 0] = torch.sin(rad)
    rot[:, 1, 1] = torch.cos(rad)
    half = torch.tensor(spatial, dtype=torch.float64) / 2.0
    # A = S^-1 R S in spatial-axis order (S: normalised -> pixel units).
    mat = rot * half[None, None, :] / half[None, :, None]
    # affine_grid's coordinate j is spatial axis n-1-j (x = last axis): reverse both orders.
    mat = mat.flip(1).flip(2)
    return torch.cat([mat, torch.zeros(len(rad), n, 1, dtype=torch.float64)], dim=2)


def _rotate(x: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotate each item of ``x`` ``[B, C, *spatial]`` by its angle (bilinear, zero padding)."""
    spatial = tuple(x.shape[2:])
    if len(spatial) not in (2, 3):
        raise ValueError(f"expected 2D or 3D items [B, C, *spatial], got {tuple(x.shape)}")
    angles_deg = angles_deg.to(x.device)
    moving = angles_deg != 0
    if not bool(moving.any()):
        return x
    theta = _rotation_theta(angles_deg.cpu(), spatial).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    rotated = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    keep = moving.view(-1, *([1] * (x.ndim - 1)))
    return torch.where(keep, rotated, x)


def _flip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip spatial axis :data:`FLIP_AXIS` of the items where ``flips`` is True (exact)."""
    flips = flips.to(x.device)
    if not bool(flips.any()):
        return x
    mask = flips.view(-1, *([1] * (x.ndim - 1)))
    return torch.where(mask, x.flip(2 + FLIP_AXIS), x)


def apply_augment(x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Augment a batch ``[B, C, *spatial]``: rotate by theta, then flip."""
    return _flip(_rotate(x, params.angles_deg), params.flips)


def undo_augment(y: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Map a batch ``[B, C, *spatial]`` (e.g. logits) from the augmented grid back to the original.

    Inverse of :func:`apply_augment`: unflip, then rotate by -theta.
    """
    return _rotate(_flip(y, params.flips), -params.angles_deg)


def sharpen(q: torch.Tensor, temperature: float) -> torch.Tensor:
    """q^(1/T) / sum_c q^(1/T) over the channel axis; T = 1 returns ``q`` unchanged."""
    if temperature == 1.0:
        return q
    powered = q.clamp_min(0.0) ** (1.0 / temperature)
    return powered / powered.sum(dim=1, keepdim=True).clamp_min(1e-12)


def confidence_weight(q: torch.Tensor) -> torch.Tensor:
    """Confidence map w ``[B, *spatial]`` of probabilities ``q`` ``[B, C, *spatial]``.

    w = 1 - C / (C - 1) * (1 - sum_c q_c^2), one minus the normalised Gini impurity: 0 where
    q is uniform, 1 where q is one-hot. For C = 2, 1 - q_bg^2 - q_fg^2 = 2 q_bg q_fg, so
    w = 1 - 4 q_bg q_fg exactly, the spec's binary weight.
    """
    c = q.shape[1]
    if c < 2:
        raise ValueError(f"need at least 2 channels, got {c}")
    gini = 1.0 - (q**2).sum(dim=1)
    return (1.0 - gini * (c / (c - 1))).clamp(0.0, 1.0)


def consistency_target(
    net: torch.nn.Module,
    x: torch.Tensor,
    *,
    k: int,
    rng: torch.Generator,
    options: AIDEOptions,
    identity_logits: torch.Tensor | None = None,
    precision: str = "float32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """AIDE's consistency target (q, w) of a batch ``x`` ``[B, C_in, *spatial]``.

    K augmented copies of every item are predicted in one forward pass without gradients
    (the network's train/eval mode is left as it is, as in the released scripts); each
    prediction is undone on the logits, turned into probabilities by softmax, and the K are
    averaged over the copies that saw each pixel: q = sum_k v_k softmax(undo_k(f(augment_k(x))))
    / sum_k v_k with v_k = [undo_k(augment_k(1)) > 0.5] (see the module docstring);
    optionally sharpened with ``options.sharpen_temperature``; w = :func:`confidence_weight` (q).

    ``identity_logits`` ``[B, C, *spatial]``: the network's logits of ``x`` itself, already
    computed (``AIDEOptions.identity_copy``); they are copy 1 (v = 1 everywhere) and only K - 1
    copies are drawn and predicted. ``precision`` (``"float32"`` or ``"bfloat16"``): of the
    forward pass (:mod:`emlabel.methods.aide.precision`).
    Returns ``q`` ``[B, C, *spatial]`` and ``w`` ``[B, *spatial]``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    b = x.shape[0]
    drawn = k - 1 if identity_logits is not None else k
    probs_parts, seen_parts = [], []
    with torch.no_grad():
        if identity_logits is not None:
            probs_parts.append(torch.softmax(identity_logits.detach().float(), dim=1))
            seen_parts.append(torch.ones_like(x[:, :1]))
        if drawn:
            params = sample_augment(
                drawn * b,
                max_rotation_deg=options.max_rotation_deg,
                flip_prob=options.flip_prob,
                rng=rng,
            )
            copies = x.repeat(drawn, *([1] * (x.ndim - 1)))  # copy j of item i: j * B + i
            # a ones channel rides along to mark what each copy saw (one grid per direction)
            moved = apply_augment(torch.cat([copies, torch.ones_like(copies[:, :1])], 1), params)
            c_in = x.shape[1]
            with autocast(precision, x.device):
                raw = net(moved[:, :c_in])
            back = undo_augment(torch.cat([raw.float(), moved[:, c_in:]], dim=1), params)
            probs_parts.append(torch.softmax(back[:, :-1], dim=1))
            seen_parts.append((back[:, -1:] > 0.5).float())
        probs = torch.cat(probs_parts)
        seen = torch.cat(seen_parts).to(probs.dtype)
        votes = (probs * seen).view(k, b, *probs.shape[1:]).sum(dim=0)
        coverage = seen.view(k, b, *seen.shape[1:]).sum(dim=0)
        uniform = torch.full_like(votes, 1.0 / probs.shape[1])
        q = torch.where(coverage > 0, votes / coverage.clamp_min(1.0), uniform)
        q = sharpen(q, options.sharpen_temperature)
        w = confidence_weight(q)
    return q, w
