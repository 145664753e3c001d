"""Learning from statistics + clicks in the app: trainer ``stats`` and infer ``stats``.

Every image with a statistic or clicks (image info ``emlabel.stats``) is trained with the
summary-statistics loss; images with a usable label are trained with DiceCE alongside.
After training succeeded, the model is published and its prediction for every image with
statistics/clicks (and no human label) becomes a new ``weak`` label version, which the
verifier, the EM loop and human review take from there. Model, versions and final stats are
written through one method run (:mod:`emlabel.monailabel.runs`) and appear together.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data.utils import to_affine_nd

from emlabel.data.label_files import image_affine
from emlabel.data.statistics import INFO_KEY
from emlabel.errors import InvalidRequestError
from emlabel.labels import LabelKind, Provenance
from emlabel.labels.provenance import now_iso
from emlabel.learners.stats import StatsLearner
from emlabel.methods.em.learner import FitSpec
from emlabel.methods.stats import ImageTargets, StatsOptions, StructureStats
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.tasks import OptionsTrainTask
from emlabel.monailabel.versions import datastore_items, write_label_version
from emlabel.settings import AppSettings, settings_to_dict
from emlabel.training.loading import LoadedSet

logger = logging.getLogger(__name__)

MULTIPLE_OF_UNET = 8


def map_voxels(points: list[list[int]], source_affine: np.ndarray, target_affine: np.ndarray,
               shape: tuple[int, ...]) -> torch.Tensor:  # fmt: skip
    """Voxel indices of one grid -> the nearest voxel indices of another (via world space)."""
    if not points:
        return torch.zeros((0, len(shape)), dtype=torch.long)
    rank = len(shape)  # 2D or 3D: affines reduced to that rank (MONAI keeps 4x4 for 2D)
    source, target = to_affine_nd(rank, source_affine), to_affine_nd(rank, target_affine)
    ijk = np.c_[np.asarray(points, dtype=float), np.ones(len(points))]
    mapped = (np.linalg.inv(target) @ source @ ijk.T).T[:, :rank]
    mapped = np.clip(np.rint(mapped), 0, np.asarray(shape) - 1).astype(np.int64)
    return torch.as_tensor(mapped)


class StatsTrainTask(OptionsTrainTask):
    """Trainer ``stats``: masks from a known volume per structure and a few clicked voxels."""

    REQUEST_KEYS: tuple[str, ...] = (
        "max_epochs",
        "learning_rate",
        "lambda_stat",
        "lambda_overlap",
        "lambda_rec",
        "lambda_ent",
        "use_reconstruction",
        "grow_labels",
        "grow_intensity_weight",
        "weak_terms_on_labeled",
        "batch_size",
        "seed",
    )

    OPTION_NAME = "stats"

    def default_options(self, settings: AppSettings) -> Any:
        # grow_labels on: the spec's loss alone trains diffuse masks; labels grown from the
        # clicks to the known volume are far closer (bench/stats.py, bench/README.md).
        return StatsOptions(
            max_epochs=settings.max_epochs,
            batch_size=2,
            seed=settings.seed,
            grow_labels=True,
            weak_terms_on_labeled=False,
        )

    def __call__(self, request: dict[str, Any], datastore: VersionedDatastore) -> dict[str, Any]:
        options = self.parse_request(request)
        settings = self._settings
        items, weak_ids, parents = [], [], {}
        for item in datastore_items(datastore):
            has_stats = bool(
                (datastore.get_image_info(item.id).get(INFO_KEY) or {}).get("structures")
            )
            if item.label is None and not has_stats:
                continue
            if has_stats and not item.human:
                weak_ids.append(item.id)
                parents[item.id] = item.tag
            items.append(item)
        if not weak_ids:
            raise InvalidRequestError(
                "stats needs images with statistics or clicks (PUT /emlabel/stats or emlabel import-stats)"
            )
        learner = StatsLearner(
            settings=settings,
            options=options,
            targets=lambda data, i: self._targets(datastore, data, i),
        )
        spec = FitSpec(epochs=options.max_epochs, seed=options.seed, on_epoch=lambda s: on_epoch(s))
        trainer = learner.prepare(items, spec)
        data, targets = learner.data, learner.targets
        started = now_iso()
        history: list[dict[str, Any]] = []
        grown = int(trainer.grown_mask.sum())

        def on_epoch(stats: Any) -> None:
            row = dataclasses.asdict(stats)
            history.append(row)
            logger.info(
                "stats epoch %d: loss %.4f (stat %s, ovl %s, rec %s, full %s), area error %.3f",
                stats.epoch + 1, stats.loss, stats.loss_stat, stats.loss_ovl, stats.loss_rec,
                stats.loss_full, stats.area_error,
            )  # fmt: skip
            self.write_stats(
                self._stats("RUNNING", started, options, history, data, weak_ids, grown=grown)
            )

        with datastore.begin_run("stats", stats_path=self.stats_path) as run:
            learner.fit(items, spec)
            meta = {
                "method": "stats",
                "labels": list(settings.labels),
                "settings": settings_to_dict(settings),
                "stats_options": dataclasses.asdict(options),
                "trained_at": now_iso(),
                "weak_ids": weak_ids,
            }
            checksum = run.stage_checkpoint(self.model_path, learner.state_dict(), meta)
            model = f"{self.model_path.name}@sha256:{checksum[:16]}"
            written = self._write_predictions(
                run, datastore, data, trainer, weak_ids, parents, targets, model
            )
            done = self.write_stats(
                self._stats(
                    "DONE",
                    started,
                    options,
                    history,
                    data,
                    weak_ids,
                    checksum=checksum,
                    written=written,
                    grown=grown,
                ),
                run=run,
            )
        return done

    def _targets(self, datastore: VersionedDatastore, data: LoadedSet, i: int) -> ImageTargets:
        """Statistics and clicks of image i, with clicks mapped onto the training grid."""
        image_id = data.ids[i]
        info = (datastore.get_image_info(image_id).get(INFO_KEY) or {}).get("structures", {})
        source_affine = image_affine(datastore.require_image(image_id))
        target_affine = np.asarray(data.processed[i].affine, dtype=float)
        shape = tuple(data.images.shape[2:])
        structures = []
        for name, record in info.items():
            value = self._settings.label_map.get(name)
            if value is None:
                continue
            structures.append(
                StructureStats(
                    structure=value,
                    area_mm=record.get("value"),
                    clicks_in=map_voxels(
                        record.get("clicks_inside", []), source_affine, target_affine, shape
                    ),
                    clicks_out=map_voxels(
                        record.get("clicks_outside", []), source_affine, target_affine, shape
                    ),
                )
            )
        return ImageTargets(spacing=tuple(self._settings.target_spacing), structures=structures)

    def _write_predictions(
        self, run, datastore, data, trainer, weak_ids, parents, targets, model
    ) -> list[str]:
        # Where a volume is known the written label meets it exactly (area_matched_labels).
        labels = trainer.predict_area_matched(data.images, targets)
        tags = []
        with tempfile.TemporaryDirectory(prefix="emlabel-stats-") as tmp:
            for image_id in weak_ids:
                i = data.ids.index(image_id)
                errors = volume_errors(labels[i], targets[i], self._settings)
                provenance = Provenance(
                    kind=LabelKind.WEAK,
                    source="stats",
                    version=0,
                    parent=parents.get(image_id),
                    model=model,
                    scores={f"volume_error_{k}": v for k, v in errors.items()},
                    reason=(
                        "predicted by a model trained from summary statistics and clicks; "
                        "structures with a known volume thresholded to match it"
                    ),
                )
                version = write_label_version(
                    run, datastore, data=data, index=i, label=labels[i], provenance=provenance,
                    workdir=Path(tmp),
                )  # fmt: skip
                tags.append(version.tag)
        return tags

    def _stats(
        self,
        state,
        started,
        options,
        history,
        data,
        weak_ids,
        *,
        checksum=None,
        written=None,
        grown=0,
    ):
        last = history[-1] if history else {}
        return {
            "state": state,
            "start_ts": started,
            "epochs": len(history),
            "max_epochs": options.max_epochs,
            "loss": last.get("loss"),
            "area_error": last.get("area_error"),
            "images": len(data.ids),
            "weak_images": len(weak_ids),
            "full_label_images": int(data.has_label.sum()),
            "grown_label_images": grown,
            "label_versions_written": written,
            "model_sha256": checksum,
            "history": history,
        }


def volume_errors(
    label: torch.Tensor, targets: ImageTargets, settings: AppSettings
) -> dict[str, float]:
    """|predicted volume - target| / target per structure with a known volume."""
    names = {v: k for k, v in settings.label_map.items()}
    voxel = float(np.prod(targets.spacing))
    errors = {}
    for s in targets.structures:
        if s.area_mm:
            predicted = float((label == s.structure).sum()) * voxel
            errors[names[s.structure]] = round(abs(predicted - s.area_mm) / s.area_mm, 4)
    return errors
