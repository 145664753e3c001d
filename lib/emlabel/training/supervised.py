"""Supervised segmentation training on the best available labels.

Plain PyTorch + MONAI (DiceCELoss, DiceMetric, sliding-window validation). The caller
gives the items (from the label resolver) and gets back the best weights and per-epoch
statistics; publishing the model is the caller's job.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, decollate_batch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.transforms import AsDiscrete
from monai.utils import set_determinism

from emlabel.settings import AppSettings
from emlabel.transforms import eval_chain, train_chain


@dataclasses.dataclass(frozen=True)
class EpochStats:
    """What one epoch did."""

    epoch: int
    train_loss: float
    val_dice: float | None
    val_dice_per_class: dict[str, float]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainResult:
    """Best weights and the history that led to them."""

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    best_val_dice: float | None
    history: list[EpochStats]
    train_ids: list[str]
    val_ids: list[str]


def split_items(
    items: Sequence[dict[str, Any]], *, val_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Shuffle by seed and hold out ``val_fraction`` (at least one item when there are >= 3)."""
    items = sorted(items, key=lambda x: x["id"])
    random.Random(seed).shuffle(items)
    n_val = round(len(items) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(items) >= 3:
        n_val = 1
    return items[n_val:], items[:n_val]


def train_supervised(
    network: torch.nn.Module,
    train_items: Sequence[dict[str, Any]],
    val_items: Sequence[dict[str, Any]],
    *,
    settings: AppSettings,
    max_epochs: int,
    on_epoch: Callable[[EpochStats], None] | None = None,
    device: str = "cpu",
) -> TrainResult:
    """Train ``network`` with DiceCE on ``train_items``; keep the best validation Dice."""
    if not train_items:
        raise ValueError("no labeled images to train on")
    set_determinism(seed=settings.seed)
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    network = network.to(device)
    train_ds = CacheDataset(list(train_items), transform=train_chain(settings), progress=False)
    loader = DataLoader(
        train_ds, batch_size=settings.train_batch_size, shuffle=True, num_workers=0, drop_last=False
    )
    val_ds = CacheDataset(list(val_items), transform=eval_chain(settings), progress=False)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)

    history: list[EpochStats] = []
    best_state = copy.deepcopy(network.state_dict())
    best_epoch, best_dice = 0, None
    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        network.train()
        losses = []
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(network(batch["image"].to(device)), batch["label"].to(device))
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        per_class = validate(network, val_ds, settings=settings, device=device) if val_items else {}
        val_dice = sum(per_class.values()) / len(per_class) if per_class else None
        stats = EpochStats(
            epoch=epoch,
            train_loss=sum(losses) / len(losses),
            val_dice=val_dice,
            val_dice_per_class=per_class,
            seconds=time.perf_counter() - start,
        )
        history.append(stats)
        if val_dice is None or best_dice is None or val_dice >= best_dice:
            best_dice, best_epoch = val_dice, epoch
            best_state = copy.deepcopy(network.state_dict())
        if on_epoch is not None:
            on_epoch(stats)
    return TrainResult(
        state_dict=best_state,
        best_epoch=best_epoch,
        best_val_dice=best_dice,
        history=history,
        train_ids=[str(x["id"]) for x in train_items],
        val_ids=[str(x["id"]) for x in val_items],
    )


@torch.no_grad()
def validate(
    network: torch.nn.Module, dataset: CacheDataset, *, settings: AppSettings, device: str = "cpu"
) -> dict[str, float]:
    """Mean Dice per structure over ``dataset`` with sliding-window inference."""
    network.eval()
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    to_pred = AsDiscrete(argmax=True, to_onehot=settings.num_classes)
    to_label = AsDiscrete(to_onehot=settings.num_classes)
    present: set[int] = set()
    for item in DataLoader(dataset, batch_size=1, num_workers=0):
        present.update(int(v) for v in torch.unique(item["label"]))
        logits = sliding_window_inference(
            item["image"].to(device),
            roi_size=settings.roi_size,
            sw_batch_size=1,
            predictor=network,
            overlap=settings.sw_overlap,
        )
        preds = [to_pred(x) for x in decollate_batch(logits)]
        labels = [to_label(x) for x in decollate_batch(item["label"].to(device))]
        metric(y_pred=preds, y=labels)
    values = metric.aggregate().tolist()
    # Structures absent from every validation label have no Dice; leave them out.
    return {
        name: float(v)
        for value, (name, v) in enumerate(zip(settings.labels, values, strict=True), start=1)
        if value in present
    }
