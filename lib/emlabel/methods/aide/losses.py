"""AIDE's two losses: the per-sample segmentation loss and the weighted consistency loss.

Seg(p, y) = CE(p, y) + 1 - (2 * sum(p_fg * y) + 1) / (sum(p_fg) + sum(y) + 1)

CE is the pixel mean of the cross-entropy of the logits; the soft Dice term uses the softmax
probabilities of the foreground channel(s), epsilon = 1 in numerator and denominator, and is
averaged over the foreground classes when there are several. Both are computed per sample,
because AIDE ranks the samples of a batch by their loss.

The Dice term is MONAI's ``DiceLoss`` (``softmax=True``, ``to_onehot_y=True``,
``include_background=False``, ``smooth_nr = smooth_dr = 1``, ``reduction="none"``): with the
default ``squared_pred=False`` and ``soft_label=False`` it computes per sample and class
``1 - (2 tp + 1) / (2 tp + fp + fn + 1)`` with ``tp = sum(p y)``, ``fp = sum(p) - tp``,
``fn = sum(y) - tp``, i.e. exactly ``1 - (2 sum(p y) + 1) / (sum(p) + sum(y) + 1)``
(checked against a hand computation in ``tests/test_aide.py``). MONAI's ``DiceCELoss`` is not
used because it reduces the cross-entropy over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

_DICE = DiceLoss(
    include_background=False,
    to_onehot_y=True,
    softmax=True,
    smooth_nr=1.0,
    smooth_dr=1.0,
    reduction="none",
)


def seg_loss_per_sample(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Seg(softmax(logits), target) of every sample: a tensor ``[B]``.

    ``logits``: ``[B, C, *spatial]`` (C >= 2, channel 0 = background);
    ``target``: ``[B, *spatial]`` class indices (long).
    """
    if logits.ndim < 3 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [B, C>=2, *spatial], got {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target must be [B, *spatial] matching logits {tuple(logits.shape)}, "
            f"got {tuple(target.shape)}"
        )
    target = target.long()
    ce = F.cross_entropy(logits, target, reduction="none").flatten(1).mean(dim=1)
    dice = _DICE(logits, target.unsqueeze(1)).flatten(1).mean(dim=1)
    return ce + dice


def consistency_loss(
    probs: torch.Tensor, target_q: torch.Tensor, weight_w: torch.Tensor
) -> torch.Tensor:
    """Weighted squared error mean_{samples, pixels, channels}( w * (p - q)^2 ), a scalar.

    ``probs``, ``target_q``: ``[B, C, *spatial]`` probabilities (``target_q`` is not
    differentiated); ``weight_w``: ``[B, *spatial]`` confidence weights. An empty batch gives 0.
    """
    if probs.shape != target_q.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and q {tuple(target_q.shape)} differ")
    if weight_w.shape != probs.shape[:1] + probs.shape[2:]:
        raise ValueError(f"weight_w must be [B, *spatial], got {tuple(weight_w.shape)}")
    if probs.shape[0] == 0:
        return probs.sum() * 0.0
    diff = (probs - target_q.detach()) ** 2
    return (weight_w.detach().unsqueeze(1) * diff).mean()
