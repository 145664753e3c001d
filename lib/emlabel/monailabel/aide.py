"""AIDE in the app: trainer ``aide`` (writes corrections as label versions) and infer ``aide``.

Clean (HQ) items are images whose best label is a human ``final``; noisy (LQ) items are
images whose best label is imported or machine-made, and images without any label get a
pseudo-label from the current ``segmentation`` model (task standardization, semi-supervised).
Everything is written in one method run (:mod:`emlabel.monailabel.runs`) after training
succeeded: the model (staged), one new label version per global correction (pending), each
image's network disagreement (buffered); they become visible together when the run commits,
and a failed or killed run leaves model, labels and image info as they were.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from monai import transforms as mt

from emlabel.checkpoints import model_ref
from emlabel.errors import InvalidRequestError
from emlabel.labels import LabelKind, Provenance
from emlabel.labels.provenance import now_iso
from emlabel.learners import load_learner
from emlabel.learners.aide import default_aide_options
from emlabel.methods.aide import AIDEOptions, AIDETrainer, EpochStats, LabelUpdate, label_dice
from emlabel.methods.aide.options import SPEC_SCHEDULE_FRACTIONS
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.runs import MethodRun
from emlabel.monailabel.tasks import OptionsTrainTask, VolumeInferTask
from emlabel.monailabel.versions import datastore_items, write_label_version
from emlabel.nets.app import segmentation_unet as _unet
from emlabel.nets.ensemble import PairedSoftmaxEnsemble, split_paired_output
from emlabel.settings import AppSettings, settings_to_dict
from emlabel.training.loading import LoadedSet, load_items

logger = logging.getLogger(__name__)

IMAGE_INFO_KEY = "emlabel.aide"


class AIDETrainer3D(OptionsTrainTask):
    """Trainer ``aide``: two UNets cross-correcting the noisy labels of the studies."""

    REQUEST_KEYS: tuple[str, ...] = (
        "max_epochs",
        "warmup_epochs",
        "correction_every",
        "correction_fraction",
        "correction_start_epoch",
        "train_augment",
        "filter_criterion",
        "correction_gate",
        "learning_rate",
        "batch_size",
        "seed",
    )

    OPTION_NAME = "aide"

    def __init__(
        self,
        *,
        model_path: str,
        segmentation_model_path: str,
        settings: AppSettings,
        description: str,
    ) -> None:
        super().__init__(model_path=model_path, settings=settings, description=description)
        self.segmentation_model_path = Path(segmentation_model_path)

    def default_options(self, settings: AppSettings) -> Any:
        return default_aide_options(settings)

    def parse_request(self, request: dict[str, Any]) -> AIDEOptions:
        """The request's options; the epoch schedules it does not set follow its
        ``max_epochs`` (:meth:`AIDEOptions.scaled_schedule`)."""
        options = super().parse_request(request)
        scaled = options.scaled_schedule(options.max_epochs)
        given = {k: getattr(options, k) for k in SPEC_SCHEDULE_FRACTIONS if k in request}
        return dataclasses.replace(scaled, **given)

    # ------------------------------------------------------------------ run
    def __call__(self, request: dict[str, Any], datastore: VersionedDatastore) -> dict[str, Any]:
        options = self.parse_request(request)
        settings = self._settings
        data, parents, roles = self._training_set(datastore)
        if int(data.has_label.sum()) == 0:
            raise InvalidRequestError("aide needs labeled images (final or imported) to start")
        hq = torch.tensor([roles[i] == "clean" for i in data.ids])
        keep = torch.tensor([roles[i] != "skip" for i in data.ids])
        idx = torch.nonzero(keep).flatten().tolist()
        ids = [data.ids[i] for i in idx]
        if len(ids) < options.batch_size:
            raise InvalidRequestError(
                f"aide needs at least batch_size={options.batch_size} usable images, has {len(ids)}"
            )
        trainer = AIDETrainer(
            lambda: _unet(settings),
            data.images[idx],
            data.labels[idx],
            hq_mask=hq[idx],
            options=options,
        )
        started = now_iso()
        history: list[dict[str, Any]] = []
        summary = {
            "images": len(ids),
            "clean": int(hq[idx].sum()),
            "noisy": sum(roles[i] == "noisy" for i in ids),
            "pseudo": sum(roles[i] == "pseudo" for i in ids),
            "skipped_unlabeled": sum(r == "skip" for r in roles.values()),
        }

        def on_epoch(stats: EpochStats) -> None:
            row = dataclasses.asdict(stats)
            history.append(row)
            logger.info(
                "aide epoch %d: loss f1 %.4f f2 %.4f, dice f1 %.3f f2 %.3f, corrected %d",
                stats.epoch + 1, stats.loss_f1, stats.loss_f2, stats.dice_f1, stats.dice_f2,
                stats.n_corrected,
            )  # fmt: skip
            self._write_stats("RUNNING", started, options, summary, history)

        with datastore.begin_run("aide", stats_path=self.stats_path) as run:
            trainer.fit(on_epoch=on_epoch)

            ensemble = PairedSoftmaxEnsemble(trainer.f1, trainer.f2)
            meta = {
                "method": "aide",
                "labels": list(settings.labels),
                "settings": settings_to_dict(settings),
                "aide_options": dataclasses.asdict(options),
                "trained_at": now_iso(),
                "data": summary,
                "train_ids": ids,
            }
            checksum = run.stage_checkpoint(self.model_path, ensemble.state_dict(), meta)
            model = f"{self.model_path.name}@sha256:{checksum[:16]}"
            versions = self._write_corrections(
                run, datastore, data, idx, trainer.updates, parents, model
            )
            disagreement = trainer.disagreement(trainer.images).tolist()
            for image_id, value in zip(ids, disagreement, strict=True):
                info = {"disagreement": float(value), "model": model, "time": now_iso()}
                run.update_image_info(image_id, {IMAGE_INFO_KEY: info})
            summary["label_versions_written"] = versions
            done = self._write_stats(
                "DONE", started, options, summary, history, checksum=checksum, run=run
            )
        return done

    def _training_set(
        self, datastore: VersionedDatastore
    ) -> tuple[LoadedSet, dict[str, str | None], dict[str, str]]:
        """All images with their best labels; roles clean / noisy / pseudo / skip."""
        items, parents, roles = [], {}, {}
        for item in datastore_items(datastore):
            items.append(item.as_dict())
            parents[item.id] = item.tag
            if item.label is None:
                roles[item.id] = "pseudo" if self.segmentation_model_path.exists() else "skip"
            else:
                roles[item.id] = "clean" if item.human else "noisy"
        factor = 2 ** (len(self._settings.network_channels) - 1)
        data = load_items(items, settings=self._settings, multiple_of=factor)
        if any(r == "pseudo" for r in roles.values()):
            self._pseudo_label(data, roles)
        return data, parents, roles

    def _pseudo_label(self, data: LoadedSet, roles: dict[str, str]) -> None:
        """Task standardization: the segmentation model's prediction for unlabeled images."""
        learner = load_learner(
            "segmentation", settings=self._settings, model_dir=self.segmentation_model_path.parent
        )
        todo = [i for i, image_id in enumerate(data.ids) if roles[image_id] == "pseudo"]
        subset = dataclasses.replace(data, images=data.images[todo])
        for i, label in zip(todo, learner.predict(subset), strict=True):
            data.labels[i] = torch.as_tensor(label).long()

    def _write_corrections(
        self,
        run: MethodRun,
        datastore: VersionedDatastore,
        data: LoadedSet,
        idx: list[int],
        updates: list[LabelUpdate],
        parents: dict[str, str | None],
        model: str,
    ) -> int:
        """One new (pending) label version per global correction, in order, chained by parent."""
        last_tag = {(k, data.ids[i]): parents[data.ids[i]] for i in idx for k in (1, 2)}
        written = 0
        with tempfile.TemporaryDirectory(prefix="emlabel-aide-") as tmp:
            for update in updates:
                position = idx[update.index]
                image_id = data.ids[position]
                parent = last_tag[(update.network, image_id)]
                provenance = Provenance(
                    kind=LabelKind.CORRECTED,
                    source="aide",
                    version=0,
                    parent=parent or "pseudo-label of the segmentation model",
                    iteration=update.epoch,
                    model=model,
                    scores={
                        "dice_to_previous": round(update.dice_new_vs_old, 4),
                        "dice_prediction_vs_target": round(update.dice_before, 4),
                        "network": update.network,
                    },
                    reason=(
                        f"AIDE global correction by network f{update.network} after epoch "
                        f"{update.epoch}: among the lowest-Dice labels of its training target"
                    ),
                )
                version = write_label_version(
                    run, datastore, data=data, index=position, label=update.new_label,
                    provenance=provenance, workdir=Path(tmp),
                )  # fmt: skip
                last_tag[(update.network, image_id)] = version.tag
                written += 1
        return written

    def _write_stats(
        self,
        state: str,
        started: str,
        options: AIDEOptions,
        summary: dict[str, Any],
        history: list[dict[str, Any]],
        *,
        checksum: str | None = None,
        run: MethodRun | None = None,
    ) -> dict[str, Any]:
        last = history[-1] if history else {}
        stats = {
            "state": state,
            "start_ts": started,
            "epochs": len(history),
            "max_epochs": options.max_epochs,
            "total_time": sum(h["seconds"] for h in history),
            "loss_f1": last.get("loss_f1"),
            "loss_f2": last.get("loss_f2"),
            "dice_f1": last.get("dice_f1"),
            "dice_f2": last.get("dice_f2"),
            "corrected_total": sum(h["n_corrected"] for h in history),
            "data": summary,
            "model_sha256": checksum,
            "history": history,
        }
        return self.write_stats(stats, run=run)


class SplitPairedd(mt.MapTransform):
    """Keep the ensemble's mean in ``pred``; put f1-vs-f2 disagreement into ``result``."""

    def __init__(self, *, num_classes: int, model_path: Path) -> None:
        super().__init__(keys="pred")
        self.num_classes = num_classes
        self.model_path = model_path

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        log_mean, p1, p2 = split_paired_output(d["pred"], self.num_classes)
        d["pred"] = log_mean
        value = 1.0 - label_dice(p1.max(dim=0).indices, p2.max(dim=0).indices, self.num_classes)
        info = {"disagreement": round(float(value), 6), "model": model_ref(self.model_path)}
        info["time"] = now_iso()
        d["result"] = dict(d.get("result") or {}) | {
            "aide_disagreement": info["disagreement"],
            "emlabel_image_info": {IMAGE_INFO_KEY: info},
        }
        return d


class AIDEInfer(VolumeInferTask):
    """Infer ``aide``: mean softmax of both AIDE networks; reports their disagreement."""

    def __init__(self, *, model_path: str, settings: AppSettings, description: str) -> None:
        super().__init__(
            model_path=model_path,
            network=PairedSoftmaxEnsemble(_unet(settings), _unet(settings)),
            settings=settings,
            description=description,
        )

    def extra_post_transforms(self) -> list:
        return [
            SplitPairedd(num_classes=self._settings.num_classes, model_path=Path(self.path[-1]))
        ]
