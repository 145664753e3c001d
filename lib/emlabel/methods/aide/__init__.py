"""AIDE: cross-model label self-correction (two networks, local filtering, global correction).

Plain PyTorch/MONAI on in-memory tensors (images ``[N, C, *spatial]`` float, labels
``[N, *spatial]`` long), for 2D and 3D; see ``/work/shared/specs/aide.md``.
"""

from emlabel.methods.aide.augment import (
    AugmentParams,
    apply_augment,
    confidence_weight,
    consistency_target,
    sample_augment,
    sharpen,
    undo_augment,
)
from emlabel.methods.aide.correction import (
    Correction,
    global_correction,
    label_dice,
    predict_labels,
)
from emlabel.methods.aide.filtering import filter_scores, fraction_count, split_clean_noisy
from emlabel.methods.aide.losses import consistency_loss, seg_loss_per_sample
from emlabel.methods.aide.options import FILTER_CRITERIA, AIDEOptions
from emlabel.methods.aide.schedule import is_correction_epoch, ramp
from emlabel.methods.aide.standardize import (
    StandardizedTask,
    pseudo_labels,
    standardize_domain_adaptation,
    standardize_semi_supervised,
)
from emlabel.methods.aide.trainer import AIDETrainer, EpochStats, LabelUpdate

__all__ = [
    "FILTER_CRITERIA",
    "AIDEOptions",
    "AIDETrainer",
    "AugmentParams",
    "Correction",
    "EpochStats",
    "LabelUpdate",
    "StandardizedTask",
    "apply_augment",
    "confidence_weight",
    "consistency_loss",
    "consistency_target",
    "filter_scores",
    "fraction_count",
    "global_correction",
    "is_correction_epoch",
    "label_dice",
    "predict_labels",
    "pseudo_labels",
    "ramp",
    "sample_augment",
    "seg_loss_per_sample",
    "sharpen",
    "split_clean_noisy",
    "standardize_domain_adaptation",
    "standardize_semi_supervised",
    "undo_augment",
]
