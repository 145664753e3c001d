"""Train task ``segmentation``: supervised training on the resolver's best labels.

MONAI Label's BasicTrainTask is built around ignite handlers and the stock ``final``-only
datalist; EMLabel needs the label resolver, atomic publishing and its own stats file, so
this adapter is a thin TrainTask over :func:`emlabel.training.supervised.train_supervised`.
The model and the final stats are staged in a method run and appear together at its commit.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import torch

from emlabel.distributed import world
from emlabel.labels.provenance import now_iso
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.tasks import OptionsTrainTask
from emlabel.nets.app import segmentation_unet
from emlabel.settings import AppSettings, settings_to_dict
from emlabel.training.supervised import EpochStats, split_items, train_supervised

logger = logging.getLogger(__name__)


class SegmentationTrainer(OptionsTrainTask):
    """Trains the UNet that the ``segmentation`` infer task serves."""

    #: Settings a train request may override (e.g. ``{"max_epochs": 1}``).
    REQUEST_KEYS: tuple[str, ...] = (
        "max_epochs",
        "train_batch_size",
        "learning_rate",
        "val_fraction",
        "seed",
    )

    OPTION_NAME = "train"
    DISTRIBUTED = True

    def default_options(self, settings: AppSettings) -> Any:
        return settings

    def __call__(self, request: dict[str, Any], datastore: VersionedDatastore) -> dict[str, Any]:
        settings = self.parse_request(request)
        items = datastore.training_items()
        train_items, val_items = split_items(
            items, val_fraction=settings.val_fraction, seed=settings.seed
        )
        logger.info("training on %d images, validating on %d", len(train_items), len(val_items))
        torch.manual_seed(settings.seed)  # the initial weights: a run is repeatable
        network = segmentation_unet(settings)
        started = now_iso()
        history: list[dict[str, Any]] = []

        def on_epoch(stats: EpochStats) -> None:
            history.append(stats.as_dict())
            self._write_stats(settings, started, items, history, state="RUNNING")

        with datastore.begin_run("segmentation", stats_path=self.stats_path) as run:
            result = train_supervised(
                network,
                train_items,
                val_items,
                settings=settings,
                max_epochs=settings.max_epochs,
                on_epoch=on_epoch,
            )
            meta = {
                "method": "segmentation",
                "labels": list(settings.labels),
                "settings": settings_to_dict(settings),
                "best_epoch": result.best_epoch,
                "best_val_dice": result.best_val_dice,
                "trained_at": dt.datetime.now(dt.UTC).isoformat(),
                "label_sources": _label_sources(items),
                "train_ids": result.train_ids,
                "val_ids": result.val_ids,
            }
            checksum = run.stage_checkpoint(self.model_path, result.state_dict, meta)
            summary = self._write_stats(
                settings, started, items, history, state="DONE", checksum=checksum, result=meta,
                run=run,
            )  # fmt: skip
        return summary

    def _write_stats(
        self,
        settings: AppSettings,
        started: str,
        items: list[dict[str, Any]],
        history: list[dict[str, Any]],
        *,
        state: str,
        checksum: str | None = None,
        result: dict[str, Any] | None = None,
        run: Any = None,
    ) -> dict[str, Any]:
        last = history[-1] if history else {}
        stats = {
            "state": state,
            "start_ts": started,
            "total_time": sum(h["seconds"] for h in history),
            "epochs": len(history),
            "max_epochs": settings.max_epochs,
            "train_loss": last.get("train_loss"),
            "best_metric": (result or {}).get("best_val_dice"),
            "label_sources": _label_sources(items),
            "model_sha256": checksum,
            "processes": world().size,
            "history": history,
        }
        return self.write_stats(stats, run=run)


def _label_sources(items: list[dict[str, Any]]) -> dict[str, int]:
    """How many training labels came from each kind (human, corrected, imported, ...)."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item["kind"]] = counts.get(item["kind"], 0) + 1
    return counts
