"""Hyper-parameters of learning from summary statistics plus a few clicked pixels.

Defaults follow ``/work/shared/specs/summary-stats.md``: every loss weight is 1 to start.
"""

from __future__ import annotations

import dataclasses
import math

RECONSTRUCTION_MODES: tuple[str, ...] = ("partition", "one_vs_rest", "local")
"""Ways to generalise the two-region reconstruction to several structures (see losses.py)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StatsOptions:
    """Every setting of :class:`~emlabel.methods.stats.trainer.StatsTrainer`, with its default."""

    lambda_stat: float = 1.0
    """lambda_s, weight of the statistic term L_stat (squared relative area/volume error)."""
    lambda_overlap: float = 1.0
    """lambda_o, weight of the overlap term L_ovl (log-likelihood of the clicked pixels)."""
    lambda_rec: float = 1.0
    """lambda_rec, weight of the reconstruction term L_rec (ignored if not use_reconstruction)."""
    lambda_ent: float = 0.0
    """Weight of the entropy (sharpness) term L_ent, our addition to the spec: it turns the
    matched soft size into a matched hard size (0 = the spec's loss)."""
    stat_temperature: float = 1.0
    """T of the mask L_stat measures, m_k = softmax(logits / T)[k] (1 = the spec's soft mask).
    With T < 1 the measured size is close to the hard mask's size and its gradient acts on the
    voxels near the decision boundary (the mask grows or shrinks at its edge) instead of
    raising or lowering every voxel a little, which a diffuse mask satisfies (our addition)."""
    grow_labels: bool = False
    """Our addition: images with a known size and inside-clicks (and no full label) get the
    label grown from their clicks to that size along the image (geodesic distance, see
    ``emlabel.methods.stats.geodesic``) as a full label, trained with DiceCE beside the
    spec's terms. Off = the spec's loss alone."""
    weak_terms_on_labeled: bool = True
    """Apply L_rec, L_stat, L_ovl (and L_ent) to images that have a full label too (the
    spec's loss on every image). False: an image with a full label -- human or grown -- is
    trained by DiceCE alone; on BU-BIL the weak terms on top of grown labels took the test
    Dice from 0.295 to 0.181 (bench/stats.py)."""
    grow_intensity_weight: float = 3.0
    """lambda of the grown labels' path cost h (1 + lambda |dx| / std(x)); 0 = distance in mm."""
    lambda_full: float = 1.0
    """Weight of the DiceCE term on the images that have a full label map."""
    use_reconstruction: bool = True
    """Include L_rec (False is the spec's "both without L_rec" ablation)."""
    reconstruction_mode: str = "partition"
    """Multi-structure L_rec: "partition" (one (K+1)-region model) or "one_vs_rest"
    (mean over structures of structure-vs-rest two-region models); identical for K = 1;
    or "local" (the partition model with Gaussian-local region means)."""
    reconstruction_sigma: float = 4.0
    """Gaussian sigma in voxels of the local region means (reconstruction_mode "local")."""
    normalize_reconstruction: bool = False
    """Divide L_rec by the image variance (unit-free; our addition, off = the spec)."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    max_epochs: int = 100
    """Epochs of :meth:`StatsTrainer.fit` when none are given (one epoch = one pass)."""
    batch_size: int = 4
    """Images per optimizer step (capped at the number of images; last batch kept)."""
    seed: int = 0
    """Seed of the weight initialisation (when a factory is given) and of the batch order."""

    def validate(self) -> None:
        """Check value ranges; raises ``ValueError`` naming the first offending field.

        A train request's upper bounds are in ``emlabel.bounds.REQUEST_MAXIMA``.
        """

        def weight(v: float) -> bool:
            return math.isfinite(v) and v >= 0.0

        checks = {
            "lambda_stat": weight(self.lambda_stat),
            "lambda_overlap": weight(self.lambda_overlap),
            "lambda_rec": weight(self.lambda_rec),
            "lambda_ent": weight(self.lambda_ent),
            "lambda_full": weight(self.lambda_full),
            "grow_intensity_weight": math.isfinite(self.grow_intensity_weight)
            and self.grow_intensity_weight >= 0,
            "stat_temperature": math.isfinite(self.stat_temperature) and self.stat_temperature > 0,
            "reconstruction_mode": self.reconstruction_mode in RECONSTRUCTION_MODES,
            "reconstruction_sigma": math.isfinite(self.reconstruction_sigma)
            and self.reconstruction_sigma > 0.0,
            "learning_rate": math.isfinite(self.learning_rate) and self.learning_rate > 0.0,
            "max_epochs": self.max_epochs >= 1,
            "batch_size": self.batch_size >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"stats option '{name}' has an invalid value: {getattr(self, name)!r}"
                )
