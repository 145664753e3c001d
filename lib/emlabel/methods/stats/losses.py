"""The loss terms of learning from summary statistics plus a few clicked pixels.

The network gives logits ``[B, C, *spatial]`` with C = K + 1 (channel 0 background, channel
k structure k); the soft mask of structure k is ``m_k = softmax(logits)[k]``. A single-channel
network (C = 1) is read as a sigmoid mask ``m = sigmoid(z)`` of one structure, i.e. the
logits ``(0, z)`` (:func:`class_logits`), so binary = one structure either way.

Per image (each term only when its supervision exists for that image):

- L_stat = mean over structures with a known size A_k of (sum(m_k) * v - A_k)^2 / A_k^2,
  v = prod(spacing) (mm^2 per pixel in 2D, mm^3 per voxel in 3D), with m_k from the logits
  divided by ``stat_temperature`` T (T = 1: the spec's soft mask);
- L_ovl  = mean over structures with clicks of
  [- mean_{clicked inside} log m_k] + [- mean_{clicked outside} log(1 - m_k)];
- L_rec  = mean (x - x_hat)^2, the two-region (Chan-Vese style) image model, generalised to
  K structures as described in :func:`reconstruction_loss`; it needs no supervision;
- L_ent  = mean over voxels of the softmax entropy - sum_j p_j log p_j (our addition, off by
  default): L_stat only fixes the *soft* size sum(m_k), which a diffuse mask (m_k ~ A / N
  everywhere) meets while its argmax is empty; L_ent pushes m_k towards 0/1, so the soft
  size becomes the hard size.

Over a batch each term is the mean over the images that have it, then

  L = lambda_rec * L_rec + lambda_s * L_stat + lambda_o * L_ovl + lambda_ent * L_ent
      + lambda_full * L_full

where L_full is MONAI's DiceCE on the images with a full label map. A term that no image of
the batch has is left out (reported as None).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss
from monai.networks.layers import GaussianFilter

from emlabel.methods.stats.options import RECONSTRUCTION_MODES, StatsOptions
from emlabel.methods.stats.targets import ImageTargets

_EPS = 1e-6
_DICE_CE = DiceCELoss(to_onehot_y=True, softmax=True)


def class_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, C, *spatial]`` with C >= 2; a 1-channel sigmoid output z becomes (0, z).

    softmax((0, z))[1] = sigmoid(z), so a sigmoid network is the binary (K = 1) case.
    """
    if logits.ndim < 3:
        raise ValueError(f"logits must be [B, C, *spatial], got {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def voxel_volume(spacing: Sequence[float]) -> float:
    """v = prod(spacing): area (mm^2) of a pixel in 2D, volume (mm^3) of a voxel in 3D."""
    return math.prod(float(s) for s in spacing)


def statistic_loss(mask: torch.Tensor, area_mm: float, voxel_volume: float) -> torch.Tensor:
    """L_stat = (sum(m) * v - A)^2 / A^2 for one structure of one image (a scalar).

    ``mask``: soft mask m ``[*spatial]`` in [0, 1]; ``area_mm``: known area (2D, mm^2) or
    volume (3D, mm^3) A > 0; ``voxel_volume``: v = prod(spacing). The predicted size
    sum(m) * v is in the same physical unit as A, so the same physical size at two spacings
    gives the same loss; dividing by A^2 makes it the squared relative size error.
    """
    if not (math.isfinite(area_mm) and area_mm > 0):
        raise ValueError(f"area_mm must be finite and positive, got {area_mm}")
    if not (math.isfinite(voxel_volume) and voxel_volume > 0):
        raise ValueError(f"voxel_volume must be finite and positive, got {voxel_volume}")
    predicted = mask.sum() * voxel_volume
    return (predicted - area_mm) ** 2 / area_mm**2


def overlap_loss(
    logits: torch.Tensor,
    structure: int,
    clicks_in: torch.Tensor,
    clicks_out: torch.Tensor,
) -> torch.Tensor:
    """L_ovl = - mean_{p in clicks_in} log m_k(p) - mean_{p in clicks_out} log(1 - m_k(p)).

    ``logits``: one image's class logits ``[C, *spatial]`` (C >= 2, see :func:`class_logits`);
    m_k = softmax(logits)[k] with k = ``structure``; clicks: long ``[n, ndim]`` voxel
    coordinates (either may be empty; a missing side contributes nothing). Both logs are
    computed from the logits (log_softmax and a logsumexp over the other channels), so they
    stay finite when m_k saturates. Raises ``ValueError`` when there is no click at all.
    """
    if not 1 <= structure < logits.shape[0]:
        raise ValueError(f"structure {structure} has no channel in logits of {logits.shape[0]}")
    n_in, n_out = clicks_in.shape[0], clicks_out.shape[0]
    if n_in == 0 and n_out == 0:
        raise ValueError(f"structure {structure}: overlap_loss needs at least one click")
    log_z = torch.logsumexp(logits, dim=0)
    loss = logits.new_zeros(())
    if n_in:
        log_m = logits[structure] - log_z
        loss = loss - log_m[tuple(clicks_in.long().T)].mean()
    if n_out:
        others = torch.cat([logits[:structure], logits[structure + 1 :]], dim=0)
        log_not_m = torch.logsumexp(others, dim=0) - log_z
        loss = loss - log_not_m[tuple(clicks_out.long().T)].mean()
    return loss


def region_means(image: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean intensity per region and channel: ``[R, C_in]``.

    c_r = sum(w_r * x) / (sum(w_r) + eps), for ``image`` ``[C_in, *spatial]`` and region
    weights ``weights`` ``[R, *spatial]`` (soft masks). Gradients flow through c_r.
    """
    w = weights.flatten(1)
    x = image.flatten(1)
    return (w @ x.T) / (w.sum(dim=1, keepdim=True) + _EPS)


def two_region_loss(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean (x - x_hat)^2 with x_hat = m c1 + (1 - m) c2 (Chan-Vese style), a scalar.

    ``image``: ``[C_in, *spatial]``; ``mask``: soft mask m ``[*spatial]``; c1, c2 = mean
    intensity weighted by m and by 1 - m (per input channel); the mean runs over the
    channels and voxels.
    """
    regions = torch.stack([mask, 1.0 - mask])
    c = region_means(image, regions)  # [2, C_in]
    x_hat = torch.einsum("r...,rc->c...", regions, c)
    return ((image - x_hat) ** 2).mean()


def local_region_means(image: torch.Tensor, weights: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian-local weighted means per region and channel: ``[R, C_in, *spatial]``.

    f_r(p) = (G_sigma * (w_r x))(p) / ((G_sigma * w_r)(p) + eps), the local fitting
    functions of region-scalable fitting (Li et al., IEEE TIP 2008); ``sigma`` in voxels,
    MONAI's GaussianFilter (truncated at 4 sigma, zero padding cancels in the ratio).
    """
    spatial_dims = image.ndim - 1
    blur = GaussianFilter(spatial_dims, sigma).to(image.device)
    num = blur(weights[:, None] * image[None])  # [R, C_in, *spatial]
    den = blur(weights[:, None])  # [R, 1, *spatial]
    return num / (den + _EPS)


def reconstruction_loss(
    image: torch.Tensor,
    probs: torch.Tensor,
    mode: str = "partition",
    *,
    sigma: float = 4.0,
    normalize: bool = False,
) -> torch.Tensor:
    """L_rec of one image, a scalar: how well a piecewise-constant image from the mask fits.

    ``image``: ``[C_in, *spatial]``; ``probs``: softmax ``[K + 1, *spatial]`` (channel 0 =
    background). For K = 1 both modes are exactly the spec's two-region model
    ``x_hat = m c1 + (1 - m) c2``, ``L_rec = mean (x - x_hat)^2`` (m = probs[1], and
    probs[0] = 1 - m). For K > 1:

    - ``"partition"`` (default): the (K + 1)-region model of the whole softmax partition,
      x_hat = sum_j p_j c_j with c_j = sum(p_j x) / sum(p_j) for j = 0..K, and
      L_rec = mean (x - x_hat)^2. Every voxel is explained once, by background and all
      structures together (a soft multiphase Chan-Vese).
    - ``"one_vs_rest"``: the mean over k = 1..K of the two-region loss of m = p_k against
      1 - p_k (:func:`two_region_loss`); the "rest" region mixes background and the other
      structures, so its mean c2 is a compromise when those differ in intensity.
    - ``"local"``: the partition model with *local* means, x_hat(p) = sum_j p_j(p) f_j(p),
      f_j from :func:`local_region_means` with Gaussian ``sigma`` (voxels). A global
      two-region model cannot explain an image with more than two tissues (a lesion inside
      the liver, a cell among others), so it pulls the mask towards the dominant contrast
      (body vs air); local means only ask the mask to separate it from its surroundings.

    ``normalize`` divides by the image's variance (per input channel), so L_rec is the
    fraction of the variance left unexplained: independent of the intensity unit (HU or
    [0, 1]) and on the scale of the other terms (our addition; off = the spec's formula).

    Note: with a *soft* m the composite x_hat can also fit the image by making m follow the
    intensity between c2 and c1; the other terms and the argmax decide the final mask.
    """
    if mode not in RECONSTRUCTION_MODES:
        raise ValueError(f"reconstruction mode must be one of {RECONSTRUCTION_MODES}, got {mode!r}")
    if probs.shape[1:] != image.shape[1:]:
        raise ValueError(
            f"probs {tuple(probs.shape)} and image {tuple(image.shape)} differ in spatial shape"
        )
    if probs.shape[0] < 2:
        raise ValueError(f"probs must have background + >= 1 structure, got {probs.shape[0]}")
    image = image.to(probs.dtype)
    if normalize:
        var = image.flatten(1).var(dim=1, unbiased=False)
        image = image / (var.sqrt() + _EPS).view(-1, *([1] * (image.ndim - 1)))
    if mode == "one_vs_rest":
        return torch.stack([two_region_loss(image, p) for p in probs[1:]]).mean()
    if mode == "local":
        f = local_region_means(image, probs, sigma)  # [K + 1, C_in, *spatial]
        x_hat = (probs[:, None] * f).sum(dim=0)
        return ((image - x_hat) ** 2).mean()
    c = region_means(image, probs)  # [K + 1, C_in]
    x_hat = torch.einsum("r...,rc->c...", probs, c)
    return ((image - x_hat) ** 2).mean()


def entropy_loss(probs: torch.Tensor) -> torch.Tensor:
    """L_ent = mean over voxels of - sum_j p_j log p_j, for softmax ``probs`` ``[C, *spatial]``.

    Zero exactly when every voxel is certain (one-hot); largest (log C) for uniform voxels.
    """
    return -(probs * torch.log(probs.clamp_min(_EPS))).sum(dim=0).mean()


def full_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` of class logits ``[B, C, *sp]``
    against full label maps ``[B, *spatial]`` (long, values 0..C-1), as in supervised training."""
    return _DICE_CE(logits, labels.long().unsqueeze(1))


@dataclasses.dataclass(frozen=True)
class LossTerms:
    """The total loss of one batch and its terms (None: no image of the batch had it)."""

    total: torch.Tensor
    """L = lambda_rec L_rec + lambda_s L_stat + lambda_o L_ovl + lambda_full L_full."""
    rec: torch.Tensor | None
    """L_rec, mean over the images (None when reconstruction is off)."""
    stat: torch.Tensor | None
    """L_stat, mean over the images with at least one known area/volume."""
    ovl: torch.Tensor | None
    """L_ovl, mean over the images with at least one click."""
    ent: torch.Tensor | None
    """L_ent, mean over the images (None when lambda_ent is 0)."""
    full: torch.Tensor | None
    """DiceCE over the images with a full label map."""

    def as_floats(self) -> dict[str, float | None]:
        """``{"total": ..., "rec": ..., "stat": ..., "ovl": ..., "ent": ..., "full": ...}``."""
        return {
            f.name: None if (v := getattr(self, f.name)) is None else float(v.detach())
            for f in dataclasses.fields(self)
        }


def image_stat_loss(probs: torch.Tensor, targets: ImageTargets) -> torch.Tensor | None:
    """L_stat of one image: mean over its structures with a known size (None if none).

    ``probs``: softmax ``[K + 1, *spatial]``.
    """
    v = targets.voxel_volume
    terms = [
        statistic_loss(probs[st.structure], float(st.area_mm), v)
        for st in targets.structures
        if st.area_mm is not None
    ]
    return torch.stack(terms).mean() if terms else None


def image_overlap_loss(logits: torch.Tensor, targets: ImageTargets) -> torch.Tensor | None:
    """L_ovl of one image: mean over its structures with clicks (None if none).

    ``logits``: class logits ``[K + 1, *spatial]``.
    """
    terms = [
        overlap_loss(logits, st.structure, st.clicks_in, st.clicks_out)
        for st in targets.structures
        if st.has_clicks
    ]
    return torch.stack(terms).mean() if terms else None


def _mean(terms: list[torch.Tensor]) -> torch.Tensor | None:
    return torch.stack(terms).mean() if terms else None


def stats_loss(
    logits: torch.Tensor,
    images: torch.Tensor,
    targets: Sequence[ImageTargets],
    *,
    options: StatsOptions | None = None,
    full_labels: torch.Tensor | None = None,
    has_full: torch.Tensor | None = None,
) -> LossTerms:
    """The total loss of a batch and its terms (see the module docstring for the formulas).

    ``logits``: ``[B, C, *spatial]`` (C = 1 is read as sigmoid, see :func:`class_logits`);
    ``images``: ``[B, C_in, *spatial]``; ``targets``: one :class:`ImageTargets` per image;
    ``full_labels``: ``[B, *spatial]`` long, used where ``has_full`` ``[B]`` is True
    (default: every image, when ``full_labels`` is given).
    """
    o = options or StatsOptions()
    logits = class_logits(logits)
    b = logits.shape[0]
    if images.shape[0] != b or images.shape[2:] != logits.shape[2:]:
        raise ValueError(f"images {tuple(images.shape)} do not match logits {tuple(logits.shape)}")
    if len(targets) != b:
        raise ValueError(f"{len(targets)} targets for a batch of {b} images")
    probs = torch.softmax(logits, dim=1)
    stat_probs = (
        probs if o.stat_temperature == 1.0 else torch.softmax(logits / o.stat_temperature, 1)
    )

    rec_terms: list[torch.Tensor] = []
    stat_terms: list[torch.Tensor] = []
    ovl_terms: list[torch.Tensor] = []
    ent_terms: list[torch.Tensor] = []
    # images with a full label (DiceCE); has_full defaults to every image when labels are given
    labeled = torch.full((b,), full_labels is not None, dtype=torch.bool, device=logits.device)
    if full_labels is not None and has_full is not None:
        labeled = has_full.bool().to(logits.device)
    for i, t in enumerate(targets):
        if bool(labeled[i]) and not o.weak_terms_on_labeled:
            continue  # a full label (human or grown) is this image's whole supervision
        if o.lambda_ent > 0:
            ent_terms.append(entropy_loss(probs[i]))
        if o.use_reconstruction:
            rec_terms.append(
                reconstruction_loss(
                    images[i],
                    probs[i],
                    o.reconstruction_mode,
                    sigma=o.reconstruction_sigma,
                    normalize=o.normalize_reconstruction,
                )
            )
        if (s := image_stat_loss(stat_probs[i], t)) is not None:
            stat_terms.append(s)
        if (v := image_overlap_loss(logits[i], t)) is not None:
            ovl_terms.append(v)

    full = None
    if full_labels is not None and bool(labeled.any()):
        full = full_label_loss(logits[labeled], full_labels[labeled])

    rec, stat, ovl = _mean(rec_terms), _mean(stat_terms), _mean(ovl_terms)
    ent = _mean(ent_terms)
    total = logits.sum() * 0.0
    for weight, term in (
        (o.lambda_rec, rec),
        (o.lambda_stat, stat),
        (o.lambda_overlap, ovl),
        (o.lambda_ent, ent),
        (o.lambda_full, full),
    ):
        if term is not None:
            total = total + weight * term
    return LossTerms(total=total, rec=rec, stat=stat, ovl=ovl, ent=ent, full=full)
