"""CGS in the app: trainer ``cgs``, infer ``cgs`` (generalist head only), scoring ``ihed``.

Labeled items are the resolver's best labels; unlabeled items are the other images of the
studies. The published checkpoint holds the teacher's generalist-only U-Net (what infer
serves, so inference costs what a plain U-Net costs) and, beside it, the full teacher with
its specialist heads, which the ``ihed`` scoring method uses to flag inconsistent voxels.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer
from monailabel.interfaces.tasks.scoring import ScoringMethod

from emlabel.checkpoints import load_payload, model_ref
from emlabel.errors import InvalidRequestError
from emlabel.labels.provenance import now_iso
from emlabel.learners.cgs import FULL_MODEL_KEY, AllHeads
from emlabel.methods.cgs import CGSOptions, CGSTrainer, head_decisions, ihed_consistent
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.tasks import OptionsTrainTask, VolumeInferTask
from emlabel.nets.app import cgs_network, cgs_serving_network
from emlabel.settings import AppSettings, settings_to_dict
from emlabel.training.loading import load_items
from emlabel.verify.score_cache import force_option

logger = logging.getLogger(__name__)

IHED_INFO_KEY = "emlabel.ihed"
MULTIPLE_OF = 16  # five-level U-Net


class CGSTrainTask(OptionsTrainTask):
    """Trainer ``cgs``: mean teacher with a generalist and one specialist per structure."""

    REQUEST_KEYS: tuple[str, ...] = (
        "max_iterations",
        "labeled_batch_size",
        "unlabeled_batch_size",
        "learning_rate",
        "tau",
        "lambda_max",
        "seed",
    )

    OPTION_NAME = "cgs"

    def default_options(self, settings: AppSettings) -> Any:
        return CGSOptions(
            max_iterations=200, labeled_batch_size=2, unlabeled_batch_size=2, seed=settings.seed
        )

    def __call__(self, request: dict[str, Any], datastore: VersionedDatastore) -> dict[str, Any]:
        options = self.parse_request(request)
        labeled = datastore.training_items()
        labeled_ids = {item["id"] for item in labeled}
        unlabeled = [
            {"id": i, "image": datastore.require_image(i)}
            for i in sorted(datastore.list_images())
            if i not in labeled_ids
        ]
        if not labeled or not unlabeled:
            raise InvalidRequestError(
                f"cgs needs labeled and unlabeled images (has {len(labeled)} labeled, "
                f"{len(unlabeled)} unlabeled)"
            )
        data = load_items([*labeled, *unlabeled], settings=self._settings, multiple_of=MULTIPLE_OF)
        n = len(labeled)
        torch.manual_seed(options.seed)
        trainer = CGSTrainer(cgs_network(self._settings), options)
        started = now_iso()
        history: list[dict[str, float]] = []
        every = max(1, options.max_iterations // 20)

        def on_step(iteration: int, stats: dict[str, float]) -> None:
            history.append(stats)
            if (iteration + 1) % every == 0 or iteration + 1 == options.max_iterations:
                logger.info(
                    "cgs iteration %d: loss %.4f (sup %.4f, unsup %.4f), masks g %.2f s %.2f",
                    iteration + 1, stats["loss"], stats["loss_sup"], stats["loss_unsup"],
                    stats.get("mask_g", 0.0), stats.get("mask_s", 0.0),
                )  # fmt: skip
                self.write_stats(self._stats("RUNNING", started, options, history, n, data))

        with datastore.begin_run("cgs", stats_path=self.stats_path) as run:
            trainer.fit(data.images[:n], data.labels[:n], data.images[n:], on_step=on_step)
            serving = trainer.serving_model()
            meta = {
                "method": "cgs",
                "labels": list(self._settings.labels),
                "settings": settings_to_dict(self._settings),
                "cgs_options": dataclasses.asdict(options),
                "trained_at": now_iso(),
                "labeled_ids": data.ids[:n],
                "unlabeled_ids": data.ids[n:],
            }
            payload_extra = {FULL_MODEL_KEY: trainer.teacher.state_dict()}
            checksum = run.stage_checkpoint(
                self.model_path, serving.state_dict(), meta, extra=payload_extra
            )
            done = self.write_stats(
                self._stats("DONE", started, options, history, n, data, checksum=checksum),
                run=run,
            )
        return done

    def _stats(
        self,
        state: str,
        started: str,
        options: CGSOptions,
        history: list[dict[str, float]],
        n_labeled: int,
        data: Any,
        *,
        checksum: str | None = None,
    ) -> dict[str, Any]:
        last = history[-1] if history else {}
        step = max(1, len(history) // 50)
        return {
            "state": state,
            "start_ts": started,
            "iterations": len(history),
            "max_iterations": options.max_iterations,
            "loss": last.get("loss"),
            "loss_sup": last.get("loss_sup"),
            "loss_unsup": last.get("loss_unsup"),
            "labeled": n_labeled,
            "unlabeled": len(data.ids) - n_labeled,
            "model_sha256": checksum,
            "history": history[::step],
        }


class CGSInfer(VolumeInferTask):
    """Infer ``cgs``: the teacher's generalist head only (cost of a plain U-Net)."""

    def __init__(self, *, model_path: str, settings: AppSettings, description: str) -> None:
        super().__init__(
            model_path=model_path,
            network=cgs_serving_network(settings),
            settings=settings,
            description=description,
        )


class IHEDScoring(ScoringMethod):
    """Scoring ``ihed``: per image, the fraction of foreground voxels failing IHED, by class.

    A voxel fails inter-head error detection when the specialists' decisions are not one of
    the consistent combinations (all background, or exactly one "mine" and the rest
    "other"). Stored in image info under ``emlabel.ihed``: a disagreement signal for the
    verifier and active learning.
    """

    def __init__(self, *, model_path: str, settings: AppSettings) -> None:
        super().__init__("CGS inter-head error detection: fraction of inconsistent voxels")
        self.model_path = Path(model_path)
        self._settings = settings

    def pending(self, datastore: VersionedDatastore, *, force: bool = False) -> list[str]:
        """Images without a summary by the current cgs model (none before it is trained):
        the summary depends on the image and the model only."""
        model = model_ref(self.model_path)
        if model is None:
            return []
        return sorted(
            image_id
            for image_id, (info, _) in datastore.image_states().items()
            if force or (info.get(IHED_INFO_KEY) or {}).get("model") != model
        )

    def __call__(self, request: dict[str, Any], datastore: VersionedDatastore) -> dict[str, Any]:
        """Summarise the images not yet summarised by the current model (all: ``force``)."""
        if not self.model_path.exists():
            raise InvalidRequestError("ihed needs a trained cgs model; train 'cgs' first")
        ids = self.pending(datastore, force=force_option(request))
        model = model_ref(self.model_path)
        if ids:
            self._summarise(datastore, ids, model=model)
        return {
            image_id: summary["failed_fraction"]
            for image_id, (info, _) in sorted(datastore.image_states().items())
            if (summary := info.get(IHED_INFO_KEY) or {}).get("model") == model
        }

    def _summarise(
        self, datastore: VersionedDatastore, ids: list[str], *, model: str | None
    ) -> None:
        """Store the IHED summary of each of ``ids`` by the cgs model ``model``."""
        payload = load_payload(self.model_path)
        net = cgs_network(self._settings)
        net.load_state_dict(payload[FULL_MODEL_KEY])
        heads = AllHeads(net).eval()
        k = self._settings.num_classes - 1
        inferer = SlidingWindowInferer(
            roi_size=self._settings.roi_size, sw_batch_size=1, overlap=self._settings.sw_overlap
        )
        data = load_items(
            [{"id": i, "image": datastore.require_image(i)} for i in ids],
            settings=self._settings,
            multiple_of=MULTIPLE_OF,
        )
        with torch.no_grad():
            for i, image_id in enumerate(ids):
                out = inferer(data.images[i : i + 1], heads)[0]
                info = ihed_summary(out, k, self._settings.labels)
                info |= {"model": model, "time": now_iso()}
                datastore.update_image_info(image_id, {IHED_INFO_KEY: info})


def ihed_summary(out: torch.Tensor, k: int, names: tuple[str, ...]) -> dict[str, Any]:
    """Fraction of foreground voxels failing IHED, overall and per generalist class."""
    generalist = out[: k + 1].max(dim=0).indices
    specialists = [out[k + 1 + 3 * j : k + 4 + 3 * j][None] for j in range(k)]
    decisions = head_decisions(specialists)
    consistent = ihed_consistent(decisions)[0]
    decisions = decisions[0]
    foreground = (generalist > 0) | (decisions == 1).any(dim=0)
    n = int(foreground.sum())
    failed = foreground & ~consistent
    per_class = {}
    for value, name in enumerate(names, start=1):
        region = generalist == value
        if int(region.sum()):
            per_class[name] = round(float((failed & region).sum() / region.sum()), 6)
    return {
        "failed_fraction": round(float(failed.sum()) / n, 6) if n else 0.0,
        "foreground_voxels": n,
        "classes": dict(sorted(per_class.items(), key=lambda kv: -kv[1])),
    }
