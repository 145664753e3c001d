"""Supervised segmentation training on the best available labels.

Plain PyTorch + MONAI (DiceCELoss, compute_dice, sliding-window validation). The caller
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
from monai.data import CacheDataset
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from monai.transforms import AsDiscrete
from monai.utils import set_determinism
from torch.nn.parallel import DistributedDataParallel

from emlabel.distributed import mean_over_ranks, sharded_map, world
from emlabel.settings import AppSettings
from emlabel.training.sampling import EpochDraws, epoch_loader
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


class SupervisedTrainer(EpochTrainer[EpochStats]):
    """DiceCE training on labeled items, keeping the weights of the best validation Dice.

    Under torchrun the network trains as DistributedDataParallel, each rank on its share
    of every global batch (:mod:`emlabel.training.sampling`) and its share of the
    validation images; the weights stay the same on every rank, and so does the best epoch.
    """

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
        self.world = world()
        self.model = (
            DistributedDataParallel(self.network) if self.world.distributed else self.network
        )
        self.train_ids = [str(x["id"]) for x in train_items]
        self.val_ids = [str(x["id"]) for x in val_items]
        train_ds = CacheDataset(list(train_items), transform=train_chain(settings), progress=False)
        self.draws = EpochDraws(train_ds, settings=settings)
        self.loader = epoch_loader(self.draws, settings=settings)
        self.val_ds = CacheDataset(list(val_items), transform=eval_chain(settings), progress=False)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimizer = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
        self.best_state = copy.deepcopy(network.state_dict())
        self.best_epoch, self.best_dice = 0, None

    def train_epoch(self, epoch0: int) -> EpochStats:
        start = time.perf_counter()
        self.network.train()
        self.draws.set_epoch(epoch0)
        losses = []
        for batch in self.loader:
            self.optimizer.zero_grad()
            logits = self.model(batch["image"].to(self.device))
            loss = self.loss_fn(logits, batch["label"].to(self.device))
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
        return EpochStats(
            epoch=epoch0 + 1,
            train_loss=mean_over_ranks(sum(losses) / len(losses)),
            val_dice=None,
            val_dice_per_class={},
            seconds=time.perf_counter() - start,
        )

    def after_epoch(self, epoch0: int, stats: EpochStats) -> EpochStats:
        """Validate (rank 0); keep the weights when the mean Dice is at least the best so far."""
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
    """Mean Dice per structure over ``dataset`` with sliding-window inference (under
    torchrun each rank validates its share; every rank gets the result).

    Per structure: the mean over the images whose label has it (MONAI's ``compute_dice``
    with ``ignore_empty``, as ``DiceMetric(reduction="mean_batch")``, whose own gathering
    would wait for ranks that validate nothing); structures absent from every label are
    left out.
    """
    network.eval()
    to_pred = AsDiscrete(argmax=True, to_onehot=settings.num_classes)
    to_label = AsDiscrete(to_onehot=settings.num_classes)

    def dice_of(i: int) -> torch.Tensor:
        item = dataset[i]
        logits = sliding_window_inference(
            item["image"][None].to(device),
            roi_size=settings.roi_size,
            sw_batch_size=1,
            predictor=network,
            overlap=settings.sw_overlap,
        )
        label = item["label"].to(device)
        return compute_dice(
            to_pred(logits[0])[None], to_label(label)[None], include_background=False,
            ignore_empty=True,
        )[0].cpu()  # fmt: skip

    rows = sharded_map(dice_of, range(len(dataset)))
    if not rows:
        return {}
    table = torch.stack(rows)  # images x structures, NaN where the label lacks it
    present = ~torch.isnan(table)
    sums = torch.where(present, table, torch.zeros_like(table)).sum(dim=0)
    return {
        name: float(sums[k] / present[:, k].sum())
        for k, name in enumerate(settings.labels)
        if present[:, k].any()
    }
