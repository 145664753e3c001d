"""Largest accepted value of every numeric train option, shared by all trainers.

A train request is work the server does on the caller's behalf; without an upper bound
``{"max_epochs": 1000000000}`` ties up the CPU for years. The minimums stay in each option
class's ``validate()`` (and ``AppSettings.validate``); this table only caps from above,
and :func:`check_maxima` also refuses NaN and infinity, which compare as neither too
small nor too large. ``tests/test_bounds.py`` fails when an option has no entry here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

from emlabel.errors import InvalidRequestError

EPOCHS_MAX = 10_000
"""Cap of every epoch count (and of epoch-valued schedule steps)."""
BATCH_MAX = 64
"""Cap of every batch size: items per optimizer step."""
WEIGHT_MAX = 1000.0
"""Cap of every loss weight (the defaults are 0.1 to 10)."""

REQUEST_MAXIMA: dict[str, float] = {
    # lengths of a run
    "max_epochs": EPOCHS_MAX,  # segmentation, aide, stats
    "epochs": EPOCHS_MAX,  # em: epochs of each M-step
    "iterations": 20,  # em: EM iterations (EMOptions.validate's own cap)
    "max_iterations": 100_000,  # cgs: optimizer steps
    "steps": 100_000,  # verifier: optimizer steps of the learned verifier
    "errors_per_region": 32,  # verifier: corrupted copies per structure and step
    "channels": 512,  # verifier: feature channels of a network stage
    # schedules, in epochs
    "warmup_epochs": EPOCHS_MAX,
    "correction_every": EPOCHS_MAX,
    "correction_start_epoch": EPOCHS_MAX,
    "lr_step": EPOCHS_MAX,
    # batch sizes and copies per image
    "train_batch_size": BATCH_MAX,
    "batch_size": BATCH_MAX,
    "labeled_batch_size": BATCH_MAX,
    "unlabeled_batch_size": BATCH_MAX,
    "k_augment": 32,
    # optimizer
    "learning_rate": 1.0,
    "momentum": 1.0,
    "weight_decay": 1.0,
    "lr_gamma": 1.0,
    "poly_power": 10.0,
    "seed": 2**31 - 1,
    # fractions, probabilities and thresholds
    "val_fraction": 1.0,
    "flip_prob": 1.0,
    "filter_ratio": 1.0,
    "correction_fraction": 1.0,
    "tau": 1.0,
    "ema_decay_max": 1.0,
    "cutmix_area": 1.0,
    "jitter_strength": 1.0,
    "correct_threshold": 1.0,
    "bad_dice": 1.0,
    "target_width": 0.5,
    "model_dropout": 1.0,
    "validation_fraction": 1.0,
    "review_threshold": 1.0,
    # angles (degrees)
    "max_rotation_deg": 180.0,
    "rotation_degrees": 180.0,
    # temperatures, loss weights, lengths in voxels
    "sharpen_temperature": 100.0,
    "stat_temperature": 100.0,
    "consistency_weight": WEIGHT_MAX,
    "lambda_max": WEIGHT_MAX,
    "lambda_stat": WEIGHT_MAX,
    "lambda_overlap": WEIGHT_MAX,
    "lambda_rec": WEIGHT_MAX,
    "lambda_ent": WEIGHT_MAX,
    "lambda_full": WEIGHT_MAX,
    "grow_intensity_weight": WEIGHT_MAX,
    "reconstruction_sigma": 100.0,
}
"""Option name -> largest accepted value, for every numeric option of every trainer."""


def check_maxima(options: Any, what: str, keys: Iterable[str] | None = None) -> None:
    """Refuse (InvalidRequestError, a 400) an option above its maximum or not finite.

    ``options`` is an option dataclass; only ``keys`` are checked (default: every field),
    so a request is judged on what it set, not on the server's configured defaults.
    Booleans, strings and options without an entry are left alone; a tuple option is
    checked element by element.
    """
    names = [f.name for f in dataclasses.fields(options)] if keys is None else list(keys)
    for name in names:
        value = getattr(options, name)
        for item in value if isinstance(value, tuple) else (value,):
            _check_one(name, item, what)


def _check_one(name: str, value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequestError(f"{what} option '{name}' is {value}; it must be a finite number")
    maximum = REQUEST_MAXIMA.get(name)
    if maximum is not None and value > maximum:
        raise InvalidRequestError(
            f"{what} option '{name}' is {value}; the maximum is {_show(maximum)}"
        )


def _show(maximum: float) -> str:
    """``10000`` rather than ``10000.0``, ``0.5`` as it is."""
    return str(int(maximum)) if float(maximum).is_integer() else str(maximum)
