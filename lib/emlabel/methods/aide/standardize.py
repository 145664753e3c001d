"""Task standardization: turn semi-supervised learning and domain adaptation into noisy labels.

Train a model on the high-quality (HQ) labels, predict the images without labels (unlabeled
images, or the target domain), and use those predictions as low-quality (LQ) labels. The
result is one training set in which every item has a label, with the HQ items marked so that
AIDE never relabels them.

The training itself is the caller's: ``train_fn(images, labels)`` receives the HQ items and
returns a trained network (any supervised trainer will do; tests pass a tiny one). Nothing
here reads or writes files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from emlabel.methods.aide.correction import predict_labels

TrainFn = Callable[[torch.Tensor, torch.Tensor], torch.nn.Module]
"""``train_fn(images [N, C, *spatial], labels [N, *spatial]) -> trained network``."""


@dataclasses.dataclass(frozen=True)
class StandardizedTask:
    """A noisy-label training set: every item labeled, HQ items marked."""

    images: torch.Tensor
    """``[N, C, *spatial]`` float: the HQ items first, then the pseudo-labeled ones."""
    labels: torch.Tensor
    """``[N, *spatial]`` long: HQ labels, then LQ pseudo-labels."""
    hq_mask: torch.Tensor
    """``[N]`` bool, True for the HQ items."""


def pseudo_labels(
    net: torch.nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 4,
    keep_largest_component: bool = False,
) -> torch.Tensor:
    """Hard argmax predictions ``[N, *spatial]`` (long) of ``net`` in eval mode."""
    labels, _ = predict_labels(
        net, images, batch_size=batch_size, keep_largest_component=keep_largest_component
    )
    return labels


def _standardize(
    hq_images: torch.Tensor,
    hq_labels: torch.Tensor,
    other_images: torch.Tensor,
    *,
    train_fn: TrainFn,
    keep_largest_component: bool,
    include_hq: bool,
) -> StandardizedTask:
    if hq_images.shape[0] == 0:
        raise ValueError("need at least one image with an HQ label")
    if hq_labels.shape != hq_images.shape[:1] + hq_images.shape[2:]:
        raise ValueError(
            f"HQ labels {tuple(hq_labels.shape)} do not match HQ images {tuple(hq_images.shape)}"
        )
    if other_images.shape[1:] != hq_images.shape[1:]:
        raise ValueError(
            f"images to pseudo-label {tuple(other_images.shape)} do not match "
            f"HQ images {tuple(hq_images.shape)} (same channels and size needed)"
        )
    net = train_fn(hq_images, hq_labels.long())
    lq_labels = pseudo_labels(net, other_images, keep_largest_component=keep_largest_component)
    if not include_hq:
        return StandardizedTask(
            images=other_images,
            labels=lq_labels,
            hq_mask=torch.zeros(other_images.shape[0], dtype=torch.bool),
        )
    return StandardizedTask(
        images=torch.cat([hq_images, other_images]),
        labels=torch.cat([hq_labels.long(), lq_labels]),
        hq_mask=torch.cat(
            [
                torch.ones(hq_images.shape[0], dtype=torch.bool),
                torch.zeros(other_images.shape[0], dtype=torch.bool),
            ]
        ),
    )


def standardize_semi_supervised(
    labeled_images: torch.Tensor,
    labeled_labels: torch.Tensor,
    unlabeled_images: torch.Tensor,
    *,
    train_fn: TrainFn,
    keep_largest_component: bool = False,
) -> StandardizedTask:
    """Semi-supervised -> noisy labels: train on the labeled items, pseudo-label the others.

    Returns the labeled items (HQ) followed by the unlabeled ones with LQ pseudo-labels.
    """
    return _standardize(
        labeled_images,
        labeled_labels,
        unlabeled_images,
        train_fn=train_fn,
        keep_largest_component=keep_largest_component,
        include_hq=True,
    )


def standardize_domain_adaptation(
    source_images: torch.Tensor,
    source_labels: torch.Tensor,
    target_images: torch.Tensor,
    *,
    train_fn: TrainFn,
    keep_largest_component: bool = False,
    include_source: bool = True,
) -> StandardizedTask:
    """Domain adaptation -> noisy labels: train on the source domain, pseudo-label the target.

    With ``include_source`` (the paper's setting) the result is the source items (HQ)
    followed by the target items with LQ pseudo-labels; without it only the target items.
    """
    return _standardize(
        source_images,
        source_labels,
        target_images,
        train_fn=train_fn,
        keep_largest_component=keep_largest_component,
        include_hq=include_source,
    )
