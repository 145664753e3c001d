"""Base MONAILabelApp for EMLabel: typed settings, versioned datastore, clear 4xx errors.

``apps/emlabel/main.py`` subclasses this and only registers tasks. Stock MONAI Label
answers 500 to unknown images/models/strategies and lets ``image=`` name any file on the
server; every request entry point here checks its input first.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.config import settings as ml_settings
from monailabel.interfaces.app import MONAILabelApp

from emlabel.allocator import keep_freed_memory
from emlabel.atomic import atomic_write_json
from emlabel.data.validation import check_image_id
from emlabel.errors import EMLabelError, InvalidRequestError, NotFoundError
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.http import http_errors, to_http
from emlabel.monailabel.infer_options import check_infer_options
from emlabel.planning.effective import effective_settings
from emlabel.settings import AppSettings, settings_to_dict

logger = logging.getLogger(__name__)


class EMLabelAppBase(MONAILabelApp):
    """Parses settings once, validates every request, serves label versions."""

    def __init__(
        self,
        app_dir: str,
        studies: str,
        conf: dict[str, Any] | None,
        *,
        name: str,
        description: str,
        version: str,
    ) -> None:
        keep_freed_memory()  # every server process trains or infers on CPU tensors
        conf = dict(conf or {})
        try:
            effective = effective_settings(
                studies,
                conf,
                base_dir=Path(app_dir),
                write_plan_file=not ml_settings.MONAI_LABEL_DATASTORE_READ_ONLY,
            )
        except EMLabelError as e:
            # Fail at start with the key named (MONAI Label prints the exception).
            raise SystemExit(f"EMLabel: bad configuration: {e.message}") from e
        self.settings: AppSettings = effective.settings
        self.plan = effective.plan
        self.model_dir = Path(app_dir) / "model"
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self._save_plan_beside_models(effective.plan_path)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf={k: str(v) for k, v in conf.items()},
            name=name,
            description=description,
            version=version,
            labels=list(self.settings.labels),
        )

    def _save_plan_beside_models(self, plan_path: Path | None) -> None:
        """``model/plan.json``: the data's plan and the settings the models are built with."""
        record = {
            "plan_file": str(plan_path) if plan_path else None,
            "plan": self.plan.to_dict() if self.plan else None,
            "settings": settings_to_dict(self.settings),
        }
        atomic_write_json(record, self.model_dir / "plan.json")

    def info(self) -> dict[str, Any]:
        """MONAI Label's ``/info`` plus ``emlabel_plan`` (the plan and the settings it gave) and
        ``emlabel_review`` (budget, reviews by routing, labels probably still wrong)."""
        meta = super().info()
        planned = self.plan.settings_values() if self.plan else {}
        meta["emlabel_plan"] = {
            "planned": self.plan is not None,
            "plan": self.plan.to_dict() if self.plan else None,
            "settings": {
                key: list(v) if isinstance(v := getattr(self.settings, key), tuple) else v
                for key in ("spatial_dims", "in_channels", "modality", "normalisation",
                            "intensity_window", "intensity_stats", "target_spacing",
                            "roi_size", "network_channels", "labels", "label_values")
            },
            "overridden": sorted(
                key for key, value in planned.items()
                if (list(v) if isinstance(v := getattr(self.settings, key), tuple) else v) != value
            ),
        }  # fmt: skip
        datastore = self.datastore()
        if isinstance(datastore, VersionedDatastore):
            from emlabel.methods.em import EMFiles
            from emlabel.monailabel.review import review_status

            try:
                meta["emlabel_review"] = review_status(
                    datastore, settings=self.settings, files=EMFiles(self.model_dir)
                )
            except (ValueError, OSError) as e:  # /info must answer (viewers connect with it)
                logger.warning("review status unavailable: %s", e)
                meta["emlabel_review"] = {"error": f"review status unavailable: {e}"}
        return meta

    # ----------------------------------------------------------- datastore
    def init_datastore(self) -> Any:
        remote = self.studies.startswith(("http://", "https://"))
        if remote and ml_settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
            return super().init_datastore()  # stock, unversioned
        if remote:
            # DICOMweb: MONAI Label's DICOMweb datastore, with EMLabel's versioned cache.
            from emlabel.monailabel.dicomweb import dicomweb_datastore

            self.studies = self.studies.rstrip("/").strip()
            try:
                datastore = dicomweb_datastore(self.studies, settings=self.settings)
            except EMLabelError as e:
                raise SystemExit(f"EMLabel: DICOMweb datastore: {e.message}") from e
            # a SEG saved from a viewer on a routed image is its review, as a REST save is
            datastore.on_final_taken_in = functools.partial(self._record_review, datastore)
        else:
            datastore = VersionedDatastore(
                self.studies,
                settings=self.settings,
                extensions=tuple(ml_settings.MONAI_LABEL_DATASTORE_FILE_EXT),
                auto_reload=ml_settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                read_only=ml_settings.MONAI_LABEL_DATASTORE_READ_ONLY,
            )
        # Every process that builds the app (the server, each training / scoring process)
        # finishes what dead processes left: runs aborted or rolled forward, temp files.
        if not ml_settings.MONAI_LABEL_DATASTORE_READ_ONLY:
            datastore.recover_runs(model_dirs=(self.model_dir,))
        return datastore

    # ------------------------------------------------------------- bundles
    def bundle_infers(self, taken: set[str]) -> dict[str, Any]:
        """One infer task per folder in the ``bundles`` setting (named after the folder)."""
        from emlabel.monailabel.bundle_infer import BundleInfer

        tasks: dict[str, Any] = {}
        for folder in self.settings.bundles:
            path = Path(folder).expanduser().resolve()
            name = path.name
            if not (path / "configs" / "inference.json").is_file():
                raise SystemExit(
                    f"EMLabel: bad configuration: setting 'bundles': {folder} is not a MONAI "
                    "bundle (no configs/inference.json)"
                )
            if name in taken or name in tasks:
                raise SystemExit(
                    f"EMLabel: bad configuration: setting 'bundles': the name '{name}' is "
                    "already taken; rename the bundle folder"
                )
            self._verify_bundle_metadata(folder, path)
            task = BundleInfer(str(path), {k: str(v) for k, v in self.conf.items()})
            if not task.is_valid():
                raise SystemExit(
                    f"EMLabel: bad configuration: setting 'bundles': {folder} has no "
                    "models/model.pt or models/model.ts"
                )
            tasks[name] = task
        return tasks

    def bundle_trainers(self, taken: set[str]) -> dict[str, Any]:
        """A trainer per served bundle that has ``configs/train.json`` (MONAI Label's own)."""
        from monailabel.tasks.train.bundle import BundleTrainTask

        trainers: dict[str, Any] = {}
        for folder in self.settings.bundles:
            path = Path(folder).expanduser().resolve()
            if not (path / "configs" / "train.json").is_file():
                continue
            if path.name in taken:
                raise SystemExit(
                    f"EMLabel: bad configuration: setting 'bundles': the trainer name "
                    f"'{path.name}' is already taken; rename the bundle folder"
                )
            task = BundleTrainTask(str(path), {k: str(v) for k, v in self.conf.items()})
            if task.is_valid():
                trainers[path.name] = task
        return trainers

    @staticmethod
    def _verify_bundle_metadata(folder: str, path: Path) -> None:
        """Refuse a bundle whose metadata.json breaks the MONAI schema (local copy only)."""
        from emlabel.bundle.schema import find_schema, verify_metadata_file

        schema = find_schema()
        if schema is None:
            logger.warning("no local MONAI bundle schema: %s served unverified", folder)
            return
        try:
            verify_metadata_file(path / "configs" / "metadata.json", schema)
        except (ValueError, OSError) as e:
            raise SystemExit(
                f"EMLabel: bad configuration: setting 'bundles': {folder}: "
                f"configs/metadata.json is invalid: {e}"
            ) from e

    def model_checkpoint(self, model: str) -> Path:
        """The trained model file behind infer task ``model`` (404 / 409 otherwise)."""
        self.check_name("model", model, self._infers)
        path = self._infers[model].get_path(validate=True)
        if not path or not str(path).endswith(".pt"):
            raise NotFoundError(f"model '{model}' has no trained EMLabel checkpoint to export")
        return Path(path)

    # ----------------------------------------------------- request checking
    def check_name(self, kind: str, name: str | None, registry: dict[str, Any]) -> None:
        """404 naming the valid choices when ``name`` is not registered."""
        if not name or name not in registry:
            valid = ", ".join(sorted(registry)) or "(none)"
            raise NotFoundError(f"unknown {kind} '{name}'; valid choices: {valid}")

    def resolve_image(self, image: Any) -> None:
        """Accept a datastore image id, or a file path inside the studies folder (400 else).

        Any other absolute path is refused without looking at it, so the answer never
        tells a client whether a file exists elsewhere on the server.
        """
        if not isinstance(image, str) or not image:
            raise InvalidRequestError("image must be an image id (a non-empty string)")
        datastore = self.datastore()
        if isinstance(datastore, VersionedDatastore) and not os.path.isabs(image):
            datastore.require_image(image)
            return
        if os.path.isabs(image):
            real = Path(os.path.realpath(image))
            remote = self.studies.startswith(("http://", "https://"))
            if remote or not real.is_relative_to(Path(os.path.realpath(self.studies))):
                raise InvalidRequestError(
                    f"image path {image!r} is outside the studies folder; give an image id"
                )
            if not real.is_file():
                raise NotFoundError(f"image file {image!r} does not exist")
            return
        check_image_id(image)

    def check_train_request(self, model: str | None, params: dict[str, Any] | None) -> int:
        """Validate a train request before MONAI Label starts a training process; the
        number of processes it asks for (option ``processes``, :mod:`.launch`)."""
        from emlabel.monailabel.launch import requested_processes, trainer_options

        self.check_name("trainer", model, self._trainers)
        trainer = self._trainers[model]
        dicomweb = self.studies.startswith(("http://", "https://"))
        processes = requested_processes(params or {}, dicomweb=dicomweb)
        if processes > 1 and not getattr(trainer, "DISTRIBUTED", False):
            several = sorted(
                n for n, t in self._trainers.items() if getattr(t, "DISTRIBUTED", False)
            )
            raise InvalidRequestError(
                f"trainer {model!r} trains in one process only; 'processes' is for "
                f"{', '.join(several)}"
            )
        parse = getattr(trainer, "parse_request", None)
        options = parse(trainer_options(params or {})) if parse is not None else None
        refusal = getattr(trainer, "distributed_refusal", None)
        if processes > 1 and refusal is not None and (message := refusal(options)):
            raise InvalidRequestError(message)
        return processes

    # ------------------------------------------------------ entry points
    @http_errors
    def infer(
        self,
        request: dict[str, Any],
        datastore: Any = None,
        *,
        user: str | None = None,
        trusted_image: bool = False,
    ) -> dict[str, Any]:
        """Run an infer task; ``save_label`` stores the output as a machine version.

        Stock MONAI Label saves infer output under the requested ``label_tag`` (even
        ``final``, i.e. as a human label); EMLabel always stores it as a new pseudo-label
        version naming the model. ``trusted_image``: the path is a file the server itself
        staged (an upload or a session), not a client's path.
        """
        request = dict(request)
        model = request.get("model")
        self.check_name("model", model, self._infers)
        if "logging" in request:
            check_infer_options({"logging": request["logging"]})
        if not trusted_image:
            self.resolve_image(request.get("image"))
        task = self._infers[model]
        is_trained = getattr(task, "is_trained", None)
        if is_trained is not None and not is_trained():
            raise HTTPException(
                status_code=409,
                detail=f"model '{model}' has not been trained yet; start training with "
                f"POST /train/{model} (Slicer/OHIF: 'Train' / 'Update Model')",
            )
        save = str(request.pop("save_label", False)).strip().lower() in ("true", "1")
        requested_tag = request.pop("label_tag", None)
        request["save_label"] = False
        result = super().infer(request, datastore)
        image = request.get("image")
        self._store_image_info(image, result)
        if save:
            version = self.store_infer_output(
                image, result, model=model, requested_tag=requested_tag, user=user
            )
            if version is not None:
                result["tag"] = version.tag
        return result

    def store_infer_output(
        self,
        image: Any,
        result: dict[str, Any],
        *,
        model: str,
        requested_tag: Any,
        user: str | None,
    ) -> Any:
        """Keep an infer result of a datastore image as a pseudo-label version."""
        from emlabel.checkpoints import model_ref
        from emlabel.labels import LabelKind, Provenance

        datastore = self.datastore()
        file = result.get("file")
        if not isinstance(datastore, VersionedDatastore) or not isinstance(image, str):
            return None
        if os.path.isabs(image) or not file or not os.path.exists(file):
            return None
        path = self._infers[model].get_path(validate=False)
        source = re.sub(r"[^A-Za-z0-9_]", "_", model)
        provenance = Provenance(
            kind=LabelKind.PSEUDO,
            source=source,
            version=0,
            model=model_ref(path) if path and str(path).endswith(".pt") else model,
            user=user,
            reason=(
                f"output of infer task '{model}' saved by a client"
                + (f" (asked for tag {requested_tag!r}; machine output is never a human label)"
                   if requested_tag not in (None, "", "original") else "")
            ),
        )  # fmt: skip
        return datastore.add_version(image, file, provenance)

    def _store_image_info(self, image: Any, result: dict[str, Any]) -> None:
        """Keep what an infer task reported about a datastore image (e.g. disagreement)."""
        params = result.get("params") if isinstance(result, dict) else None
        info = params.pop("emlabel_image_info", None) if isinstance(params, dict) else None
        datastore = self.datastore()
        if not info or not isinstance(image, str) or not isinstance(datastore, VersionedDatastore):
            return
        if image in datastore.list_images():
            datastore.update_image_info(image, info)

    @http_errors
    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        """The strategy's next image. Unlike MONAI Label's, a click starts no scoring: stock
        re-runs every scoring method (a process, a pass over every label) after each Next
        Sample, but scores change only with a label or a model (after training, on demand:
        :mod:`emlabel.verify.score_cache`)."""
        strategy = request.get("strategy") or "random"
        self.check_name("strategy", strategy, self._strategies)
        answer = self._strategies[strategy](request, self.datastore())
        if not answer or not answer.get("id"):
            return {}
        answer["path"] = self.datastore().get_image_uri(answer["id"])
        return answer

    def async_scoring(self, method: str | None, params: dict[str, Any] | None = None) -> Any:
        """Start scoring ``method``; None (MONAI Label's automatic scoring after a training
        and at start) starts only the methods with a label to judge: none before a model
        exists, none when every stored score is current."""
        if method:
            return super().async_scoring(method, params)
        due = [name for name, task in self._scoring_methods.items() if self._scoring_due(task)]
        skipped = sorted(set(self._scoring_methods) - set(due))
        if skipped:
            logger.info("automatic scoring: nothing to judge for %s", ", ".join(skipped))
        return {name: super(EMLabelAppBase, self).async_scoring(name, params) for name in due}

    def _scoring_due(self, task: Any) -> bool:
        """Whether a scoring task has labels to judge (a task that cannot tell: yes)."""
        pending = getattr(task, "pending", None)
        datastore = self.datastore()
        if pending is None or not isinstance(datastore, VersionedDatastore):
            return True
        try:
            return bool(pending(datastore))
        except (OSError, ValueError) as e:  # unreadable model or index: let the task report it
            logger.warning("automatic scoring: could not tell what is stale (%s)", e)
            return True

    @http_errors
    def scoring(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        self.check_name("scoring method", request.get("method"), self._scoring_methods)
        return super().scoring(request, datastore)

    @http_errors
    def train(self, request: dict[str, Any]) -> dict[str, Any]:
        """Train (in this process, or under torchrun when the request asks for processes)."""
        from emlabel.distributed import world
        from emlabel.monailabel.launch import PROCESSES_KEY, torchrun_train, trainer_options

        model = request.get("model")
        processes = self.check_train_request(model, request)
        if processes > 1 and not world().distributed:
            torchrun_train(
                app_dir=self.app_dir, studies=self.studies, conf=self.conf, method=str(model),
                options=trainer_options(request), processes=processes,
            )  # fmt: skip
            return self._trainers[model].stats()
        return super().train({k: v for k, v in request.items() if k != PROCESSES_KEY})

    def on_save_label(self, image_id: str, label_id: str) -> dict[str, Any]:
        """A human final on an image the verifier routed is a review: record its outcome."""
        result = super().on_save_label(image_id, label_id) or {}
        datastore = self.datastore()
        if isinstance(datastore, VersionedDatastore):
            review = self._record_review(datastore, image_id)
            if review is not None:
                result["review"] = {
                    "was_wrong": review["image_wrong"],
                    "dice_to_machine_label": review["dice"],
                }
        return result

    def _record_review(self, datastore: VersionedDatastore, image_id: str) -> dict | None:
        """The review record of a new human final on ``image_id``, if it was routed."""
        from emlabel.methods.em import EMFiles
        from emlabel.monailabel.review import record_review

        return record_review(
            datastore, image_id, settings=self.settings, files=EMFiles(self.model_dir)
        )

    def on_init_complete(self) -> None:
        super().on_init_complete()
        from emlabel.monailabel.gate import install_gate
        from emlabel.monailabel.routes import install_request_guards

        install_request_guards()
        install_gate(self)  # CORS, body cap, tokens and roles; refuses 0.0.0.0 without auth


def as_http(error: EMLabelError) -> HTTPException:
    """Re-exported for adapters that build their own responses."""
    return to_http(error)
