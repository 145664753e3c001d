"""Supervised segmentation training on the best available labels.

Plain PyTorch + MONAI (DiceCELoss, DiceMetric, sliding-window validation). The caller
gives the items (from the label resolver) and gets back the best weights and per-epoch
statistics; publishing the model is the caller's job.
"""

from __future__ import annotations

import copy
import dataclasses
import math
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
from torch.utils.data import RandomSampler

from emlabel.settings import AppSettings
from emlabel.training.skeleton import EpochTrainer
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


def epoch_sampling(n_items: int, settings: AppSettings) -> dict[str, Any]:
    """DataLoader arguments for one epoch: a shuffled pass over the items, or, when that gives
    fewer than ``settings.min_steps_per_epoch`` batches (``ceil(n / batch_size)``),
    ``min_steps * batch_size`` items drawn with replacement (torch's ``RandomSampler``), as
    nnU-Net fixes its steps per epoch."""
    steps, batch = settings.min_steps_per_epoch, settings.train_batch_size
    if math.ceil(n_items / batch) >= steps:
        return {"shuffle": True}
    return {"sampler": RandomSampler(range(n_items), replacement=True, num_samples=steps * batch)}


class SupervisedTrainer(EpochTrainer[EpochStats]):
    """DiceCE training on labeled items, keeping the weights of the best validation Dice."""

    def __init__(
        self,
        network: torch.nn.Module,
        train_items: Sequence[dict[str, Any]],
        val_items: Sequence[dict[str, Any]],
        *,
        settings: AppSettings,
        max_epochs: int,
        device: str = "cpu",
    ) -> None:
        if not train_items:
            raise ValueError("no labeled images to train on")
        super().__init__()
        set_determinism(seed=settings.seed)
        if settings.num_threads:
            torch.set_num_threads(settings.num_threads)
        self.settings, self.device, self.max_epochs = settings, device, max_epochs
        self.network = network.to(device)
        self.train_ids = [str(x["id"]) for x in train_items]
        self.val_ids = [str(x["id"]) for x in val_items]
        train_ds = CacheDataset(list(train_items), transform=train_chain(settings), progress=False)
        self.loader = DataLoader(
            train_ds, batch_size=settings.train_batch_size, num_workers=0,
            **epoch_sampling(len(train_ds), settings),
        )  # fmt: skip
        self.val_ds = CacheDataset(list(val_items), transform=eval_chain(settings), progress=False)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimizer = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
        self.best_state = copy.deepcopy(network.state_dict())
        self.best_epoch, self.best_dice = 0, None

    def train_epoch(self, epoch0: int) -> EpochStats:
        start = time.perf_counter()
        self.network.train()
        losses = []
        for batch in self.loader:
            self.optimizer.zero_grad()
            logits = self.network(batch["image"].to(self.device))
            loss = self.loss_fn(logits, batch["label"].to(self.device))
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
        return EpochStats(
            epoch=epoch0 + 1,
            train_loss=sum(losses) / len(losses),
            val_dice=None,
            val_dice_per_class={},
            seconds=time.perf_counter() - start,
        )

    def after_epoch(self, epoch0: int, stats: EpochStats) -> EpochStats:
        """Validate; keep the weights when the mean Dice is at least the best so far."""
        start = time.perf_counter()
        per_class = (
            validate(self.network, self.val_ds, settings=self.settings, device=self.device)
            if self.val_ids
            else {}
        )
        val_dice = sum(per_class.values()) / len(per_class) if per_class else None
        if val_dice is None or self.best_dice is None or val_dice >= self.best_dice:
            self.best_dice, self.best_epoch = val_dice, epoch0 + 1
            self.best_state = copy.deepcopy(self.network.state_dict())
        return dataclasses.replace(
            stats,
            val_dice=val_dice,
            val_dice_per_class=per_class,
            seconds=stats.seconds + time.perf_counter() - start,
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The best weights so far."""
        return self.best_state

    def result(self) -> TrainResult:
        return TrainResult(
            state_dict=self.best_state,
            best_epoch=self.best_epoch,
            best_val_dice=self.best_dice,
            history=list(self.history),
            train_ids=self.train_ids,
            val_ids=self.val_ids,
        )


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
    trainer = SupervisedTrainer(
        network, train_items, val_items, settings=settings, max_epochs=max_epochs, device=device
    )
    trainer.fit(on_epoch=on_epoch)
    return trainer.result()


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
