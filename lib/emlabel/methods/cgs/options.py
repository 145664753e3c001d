"""Settings of CGS training (defaults: the authors' settings, see the CGS spec)."""

from __future__ import annotations

import dataclasses
import math

from emlabel.errors import SettingsError


@dataclasses.dataclass(frozen=True, kw_only=True)
class CGSOptions:
    """Every CGS training setting, with its default."""

    tau: float = 0.95
    """Confidence threshold of the generalist pseudo-label mask M_g (max prob > tau)."""
    confident_masks: bool = False
    """Our addition: M_s and M_e also need confident heads (see ``make_pseudo_labels``); the
    spec thresholds only M_g, so the other two terms train on uncertain pixels too."""
    ema_decay_max: float = 0.99
    """Cap of the mean-teacher EMA decay min(1 - 1/(t + 1), ema_decay_max)."""
    lambda_max: float = 0.1
    """Weight of the unsupervised loss at the end of the ramp (lambda_max exp(-5 (1-s)^2))."""
    cutmix_area: tuple[float, float] = (0.02, 0.4)
    """Range of the CutMix box area (or volume) as a fraction of the image, drawn uniformly."""
    learning_rate: float = 0.01
    """Initial SGD learning rate (decayed by the poly schedule)."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 1e-4
    """SGD weight decay."""
    poly_power: float = 0.9
    """Power of the poly schedule lr = learning_rate (1 - iteration / max_iterations)^power."""
    max_iterations: int = 30_000
    """Training iterations (optimizer steps) of a full run."""
    labeled_batch_size: int = 12
    """Labeled images per iteration."""
    unlabeled_batch_size: int = 12
    """Unlabeled images per iteration (at least 2 so CutMix has a partner)."""
    seed: int = 0
    """Seed of batch sampling and augmentation."""
    rotation_degrees: float = 20.0
    """Largest small rotation of the weak view, in degrees (0 disables it)."""
    jitter_strength: float = 0.2
    """Strong-view intensity jitter: contrast and brightness change up to this fraction."""

    def validate(self) -> None:
        """Check value ranges that types alone do not express; the error names the field.

        Lower bounds (and NaN/infinity) only; a train request's upper bounds are in
        ``emlabel.bounds.REQUEST_MAXIMA``.
        """
        lo, hi = (*tuple(self.cutmix_area), math.nan, math.nan)[:2]
        checks = {
            "tau": 0 <= self.tau < 1,
            "ema_decay_max": 0 <= self.ema_decay_max < 1,
            "lambda_max": math.isfinite(self.lambda_max) and self.lambda_max >= 0,
            "cutmix_area": len(self.cutmix_area) == 2 and 0 < lo <= hi < 1,
            "learning_rate": math.isfinite(self.learning_rate) and self.learning_rate > 0,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            "poly_power": math.isfinite(self.poly_power) and self.poly_power >= 0,
            "max_iterations": self.max_iterations >= 1,
            "labeled_batch_size": self.labeled_batch_size >= 1,
            "unlabeled_batch_size": self.unlabeled_batch_size >= 2,
            "seed": self.seed >= 0,
            "rotation_degrees": 0 <= self.rotation_degrees <= 180,
            "jitter_strength": 0 <= self.jitter_strength < 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise SettingsError(
                    f"CGS option '{key}' has an invalid value: {getattr(self, key)!r}"
                )
