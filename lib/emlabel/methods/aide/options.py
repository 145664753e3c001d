"""Hyper-parameters of AIDE (cross-model label self-correction), with the spec's defaults."""

from __future__ import annotations

import dataclasses
import math

from emlabel.methods.aide.precision import PRECISIONS

FILTER_CRITERIA: tuple[str, ...] = ("seg", "ce")
"""Per-sample losses the filter can rank by: the spec's Seg (CE + soft Dice) or CE alone."""

SPEC_SCHEDULE_FRACTIONS: dict[str, float] = {
    "warmup_epochs": 0.2,
    "correction_every": 0.1,
    "lr_step": 0.3,
}
"""The spec's epoch schedules (warm-up 20, a correction every 10, an LR step every 30 of its
100 epochs) as fractions of the training, for :meth:`AIDEOptions.scaled_schedule`."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class AIDEOptions:
    """Every AIDE hyper-parameter (``/work/shared/specs/aide.md``); defaults are the spec's."""

    batch_size: int = 4
    """Items per training batch (incomplete last batch dropped)."""
    k_augment: int = 4
    """K, augmented copies per image used to build the consistency target."""
    max_rotation_deg: float = 60.0
    """Rotation angle of an augmented copy is drawn from U(-max, max) degrees (in-plane)."""
    flip_prob: float = 0.5
    """Probability of a horizontal flip of an augmented copy."""
    sharpen_temperature: float = 1.0
    """T of the sharpening q^(1/T) / sum_c q^(1/T) of the consistency target; 1 = none."""
    filter_ratio: float = 0.5
    """Fraction of each batch treated as clean (smallest counterpart loss); the rest is noisy."""
    filter_criterion: str = "seg"
    """Counterpart loss the filter ranks by: "seg" (the spec) or "ce" (pixel-mean CE; our
    addition for patch training, where Seg ranks by how much foreground a patch holds)."""
    consistency_weight: float = 10.0
    """Weight of the consistency term (multiplied by the ramp r(e))."""
    warmup_epochs: int = 20
    """E_w: epochs of the quadratic ramp; labels are corrected after every epoch <= E_w."""
    correction_every: int = 10
    """After the warm-up, labels are corrected at the end of every epoch divisible by this."""
    correction_start_epoch: int = 1
    """First 1-based epoch after which a correction may run (1 = the spec). Our addition: with
    few steps per epoch, epoch-1 networks are untrained and their guesses replace labels."""
    correction_fraction: float = 0.25
    """Fraction of the training items (lowest Dice first) whose label a correction replaces."""
    learning_rate: float = 1e-4
    """Adam (amsgrad) learning rate of each network."""
    lr_step: int = 30
    """StepLR step size, in epochs."""
    lr_gamma: float = 0.5
    """StepLR decay factor."""
    max_epochs: int = 100
    """Training epochs of :meth:`AIDETrainer.fit` when none are given."""
    train_augment: bool = False
    """Our addition (not in the spec): train on batches rotated/flipped like the consistency
    copies (same angle range and flip probability), so the networks have seen the views whose
    predictions form the consistency target."""
    correction_gate: bool = False
    """Our addition: write a correction only if the counterpart network's prediction is at
    least as close to it as to the label it replaces (see ``counterpart_confirms``)."""
    keep_largest_component: bool = False
    """Keep only the largest connected component of a prediction before it replaces a label."""
    identity_copy: bool = False
    """Our addition: the first of the K copies of the consistency target is the un-augmented
    item, whose logits the counterpart's training pass has already computed (detached; the
    same values a no-gradient pass gives, the networks not having stepped yet), so a target
    costs K - 1 forward passes. The spec draws all K copies at random."""
    no_grad_precision: str = "float32"
    """Our addition: precision of the no-gradient passes (consistency copies, correction
    predictions): "float32" (the spec), "bfloat16" (autocast) or "auto" (bfloat16 where the
    device computes it natively; :mod:`emlabel.methods.aide.precision`). Training passes
    stay float32."""
    seed: int = 0
    """Seed of the weight initialisation, the batch order and the augmentation."""

    def scaled_schedule(self, epochs: int) -> AIDEOptions:
        """These options for a training of ``epochs`` epochs, with the spec's epoch schedules
        scaled to it (:data:`SPEC_SCHEDULE_FRACTIONS`; each at least 1): at 100 epochs they are
        the spec's. Without the scaling a short training stays in the warm-up throughout and
        runs a global correction (a prediction of every item by both networks) after every
        epoch."""
        scaled = {name: max(1, round(f * epochs)) for name, f in SPEC_SCHEDULE_FRACTIONS.items()}
        return dataclasses.replace(self, max_epochs=epochs, **scaled)

    def validate(self) -> None:
        """Check value ranges; raises ``ValueError`` naming the first offending field.

        A train request's upper bounds are in ``emlabel.bounds.REQUEST_MAXIMA``.
        """
        checks = {
            "batch_size": self.batch_size >= 1,
            "k_augment": self.k_augment >= 1,
            "max_rotation_deg": math.isfinite(self.max_rotation_deg)
            and 0.0 <= self.max_rotation_deg <= 180.0,
            "flip_prob": 0.0 <= self.flip_prob <= 1.0,
            "sharpen_temperature": math.isfinite(self.sharpen_temperature)
            and self.sharpen_temperature > 0.0,
            "filter_ratio": 0.0 <= self.filter_ratio <= 1.0,
            "filter_criterion": self.filter_criterion in FILTER_CRITERIA,
            "no_grad_precision": self.no_grad_precision in PRECISIONS,
            "consistency_weight": math.isfinite(self.consistency_weight)
            and self.consistency_weight >= 0.0,
            "warmup_epochs": self.warmup_epochs >= 0,
            "correction_every": self.correction_every >= 1,
            "correction_start_epoch": self.correction_start_epoch >= 1,
            "correction_fraction": 0.0 <= self.correction_fraction <= 1.0,
            "learning_rate": math.isfinite(self.learning_rate) and self.learning_rate > 0.0,
            "lr_step": self.lr_step >= 1,
            "lr_gamma": 0.0 < self.lr_gamma <= 1.0,
            "max_epochs": self.max_epochs >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"AIDE option '{name}' has an invalid value: {getattr(self, name)!r}"
                )
