"""CGS: Collaborative Generalist and Specialists for multi-target semi-supervised segmentation.

The network lives in :mod:`emlabel.nets.cgs`; this package holds the training frame.
"""

from emlabel.methods.cgs.augment import (
    CutMix,
    intensity_jitter,
    random_box,
    random_cutmix,
    weak_view,
)
from emlabel.methods.cgs.ihed import head_decisions, ihed_consistent, ihed_mask, specialist_fused
from emlabel.methods.cgs.losses import (
    lambda_schedule,
    masked_cross_entropy,
    masked_dice_loss,
    seg_loss,
    supervised_loss,
    unsupervised_loss,
)
from emlabel.methods.cgs.options import CGSOptions
from emlabel.methods.cgs.pseudo import (
    PseudoLabels,
    consensus,
    generalist_pseudo_labels,
    make_pseudo_labels,
)
from emlabel.methods.cgs.targets import one_vs_rest, specialist_targets
from emlabel.methods.cgs.teacher import ema_decay, ema_update, make_teacher
from emlabel.methods.cgs.trainer import CGSTrainer

__all__ = [
    "CGSOptions",
    "CGSTrainer",
    "CutMix",
    "PseudoLabels",
    "consensus",
    "ema_decay",
    "ema_update",
    "generalist_pseudo_labels",
    "head_decisions",
    "ihed_consistent",
    "ihed_mask",
    "intensity_jitter",
    "lambda_schedule",
    "make_pseudo_labels",
    "make_teacher",
    "masked_cross_entropy",
    "masked_dice_loss",
    "one_vs_rest",
    "random_box",
    "random_cutmix",
    "seg_loss",
    "specialist_fused",
    "specialist_targets",
    "supervised_loss",
    "unsupervised_loss",
    "weak_view",
]
