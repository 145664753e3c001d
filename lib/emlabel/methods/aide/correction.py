"""Global label correction: replace the labels a network disagrees with most.

At the end of a correction epoch a network predicts every training item (eval mode, no
augmentation, hard argmax, optionally only the largest connected component of each class);
the items are ranked by Dice(prediction, reference label) ascending, and the lowest
``fraction`` of *all* items are candidates: each candidate gets the prediction as its new
label, except high-quality (HQ) items and items whose prediction is empty (all background),
which are skipped (and not replaced by the next item in the ranking). For 3D data an item is a
whole volume, so the ranking is per case.

This module only proposes corrections; :class:`~emlabel.methods.aide.trainer.AIDETrainer`
decides which label copy they are written into, and (``correction_gate``, our addition) asks
the counterpart network to confirm each of them with :func:`counterpart_confirms`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent
from monai.utils import convert_to_tensor

from emlabel.methods.aide.filtering import fraction_count
from emlabel.methods.aide.precision import autocast
from emlabel.metrics import dice


@dataclasses.dataclass(frozen=True)
class Correction:
    """A proposed label replacement for one training item."""

    index: int
    """Position of the item in the training set."""
    dice_before: float
    """Dice(prediction, reference label) that ranked the item."""
    new_label: torch.Tensor
    """``[*spatial]`` long, the network's prediction that becomes the item's label."""


def label_dice(pred: torch.Tensor, ref: torch.Tensor, num_classes: int) -> float:
    """Dice of two label maps, averaged over the foreground classes 1..C-1.

    Each class is :func:`emlabel.metrics.dice` of the binary masks (1.0 when both are empty).
    """
    if pred.shape != ref.shape:
        raise ValueError(f"label maps differ in shape: {tuple(pred.shape)} vs {tuple(ref.shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    p = pred.detach().cpu().numpy()
    r = ref.detach().cpu().numpy()
    return float(np.mean([dice(p == c, r == c) for c in range(1, num_classes)]))


def predict_labels(
    net: torch.nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 4,
    keep_largest_component: bool = False,
    precision: str = "float32",
) -> tuple[torch.Tensor, int]:
    """Hard argmax prediction ``[N, *spatial]`` of every item in eval mode, and C.

    The network's train/eval mode is restored afterwards. With ``keep_largest_component``
    each foreground class keeps only its largest connected component (MONAI's
    ``KeepLargestConnectedComponent``, independently per class). ``precision``
    (``"float32"`` or ``"bfloat16"``): of the forward passes
    (:mod:`emlabel.methods.aide.precision`).
    """
    was_training = net.training
    net.eval()
    chunks: list[torch.Tensor] = []
    num_classes = 0
    try:
        with torch.no_grad(), autocast(precision, images.device):
            for start in range(0, images.shape[0], batch_size):
                logits = net(images[start : start + batch_size])
                num_classes = logits.shape[1]
                chunks.append(logits.max(dim=1).indices)
    finally:
        net.train(was_training)
    if not chunks:
        raise ValueError("no images to predict")
    labels = torch.cat(chunks)
    if keep_largest_component and num_classes > 1:
        lcc = KeepLargestConnectedComponent(
            applied_labels=list(range(1, num_classes)), is_onehot=False, independent=True
        )
        kept = [convert_to_tensor(lcc(lab[None]), track_meta=False)[0] for lab in labels]
        labels = torch.stack(kept).long()
    return labels, num_classes


def global_correction(
    net: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    hq_mask: torch.Tensor,
    fraction: float,
    keep_largest_component: bool = False,
    batch_size: int = 4,
    predictions: tuple[torch.Tensor, int] | None = None,
) -> list[Correction]:
    """Corrections proposed by ``net`` for the items ``images`` ``[N, C_in, *spatial]``.

    ``labels`` ``[N, *spatial]`` are the reference labels the items are ranked against;
    ``hq_mask`` ``[N]`` bool marks items that must never be relabeled; ``predictions``: the
    net's :func:`predict_labels` output (labels, C) if already computed. Returns the corrections in
    ranking order (lowest Dice first); ``labels`` is not modified.
    """
    n = images.shape[0]
    if labels.shape[0] != n or hq_mask.shape != (n,):
        raise ValueError(
            f"images ({n}), labels ({labels.shape[0]}) and hq_mask {tuple(hq_mask.shape)} "
            "must describe the same items"
        )
    preds, num_classes = predictions or predict_labels(
        net, images, batch_size=batch_size, keep_largest_component=keep_largest_component
    )
    scores = [label_dice(preds[i], labels[i], num_classes) for i in range(n)]
    ranking = sorted(range(n), key=lambda i: (scores[i], i))
    corrections: list[Correction] = []
    for i in ranking[: fraction_count(fraction, n)]:
        if bool(hq_mask[i]) or not bool((preds[i] > 0).any()):
            continue
        corrections.append(Correction(index=i, dice_before=scores[i], new_label=preds[i].clone()))
    return corrections


def counterpart_confirms(
    new_label: torch.Tensor,
    old_label: torch.Tensor,
    counterpart_prediction: torch.Tensor,
    num_classes: int,
) -> bool:
    """True when the counterpart's prediction is at least as close to the proposed label as to
    the label it would replace: Dice(new, q) >= Dice(old, q) (our addition to AIDE).

    The counterpart learned from the very label under review, so it leans towards keeping it:
    a correction passes only when a second, independently initialised network also prefers it.
    When both networks are worse than the labels (small data, real annotators) their guesses
    disagree and the labels stay.
    """
    q = counterpart_prediction
    return label_dice(new_label, q, num_classes) >= label_dice(old_label, q, num_classes)
