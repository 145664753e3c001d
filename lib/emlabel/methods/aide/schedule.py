"""The two AIDE schedules: the consistency ramp and the label-correction epochs."""

from __future__ import annotations


def ramp(epoch0: int, warmup_epochs: int) -> float:
    """Quadratic ramp r(e) = min((e / E_w)^2, 1), with e the 0-based epoch.

    r weighs the consistency term up (``consistency_weight * r``) while the segmentation loss
    of suspected-noisy samples fades (``1 - r``). ``E_w = 0`` means no warm-up: r = 1.
    """
    if epoch0 < 0:
        raise ValueError(f"epoch0 must be >= 0, got {epoch0}")
    if warmup_epochs <= 0:
        return 1.0
    return min((epoch0 / warmup_epochs) ** 2, 1.0)


def is_correction_epoch(epoch1: int, warmup_epochs: int, every: int, start: int = 1) -> bool:
    """Whether global label correction runs at the end of 1-based epoch e.

    True when e >= start and (e <= E_w or e % every == 0); the spec's schedule is start = 1.
    """
    if epoch1 < 1:
        raise ValueError(f"epoch1 is 1-based and must be >= 1, got {epoch1}")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return epoch1 >= start and (epoch1 <= warmup_epochs or epoch1 % every == 0)
