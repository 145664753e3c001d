"""EM relabeling in the app: trainer ``em`` (a thin adapter; scoring ``verifier`` is in
:mod:`.verifier`).

The loop itself is library code (:mod:`emlabel.methods.em`, learners in
:mod:`emlabel.learners`); here the datastore becomes items, the request becomes typed
options, and the loop's results become one method run: the learner's model, the
corrections as label versions, each judged image's verifier info, the ROC and the EM state,
visible together when the run commits. The review strategy is in :mod:`.review`. When a
learned verifier exists (trainer ``verifier``) the critic scores with it too, and once
enough new finals were saved since it was trained it is retrained first, in the same run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emlabel.checkpoints import model_ref
from emlabel.distributed import shared_temporary_directory, world
from emlabel.errors import InvalidRequestError
from emlabel.labels import LabelKind, Provenance
from emlabel.labels.provenance import now_iso
from emlabel.learners import distributed_learners, load_learner
from emlabel.methods.em import (
    EMFiles,
    EMItem,
    EMLoop,
    EMOptions,
    EMResult,
    Learner,
    operating_point,
    pending_tag,
    random_reviews,
    scored_reviews,
    structure_reviews,
)
from emlabel.methods.em.verifier_training import (
    VERIFIER_MODEL_FILE,
    is_stale,
    load_learned,
    train_from_items,
)
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.review import VERIFIER_INFO_KEY
from emlabel.monailabel.runs import MethodRun
from emlabel.monailabel.tasks import OptionsTrainTask
from emlabel.monailabel.versions import datastore_items
from emlabel.settings import AppSettings, settings_to_dict
from emlabel.verify import save_roc
from emlabel.verify.learned import LearnedVerifier


class EMTrainTask(OptionsTrainTask):
    """Trainer ``em``: E-step (verify, correct, route) then M-step (retrain), per iteration."""

    REQUEST_KEYS: tuple[str, ...] = (
        "iterations",
        "epochs",
        "correct_threshold",
        "review_threshold",
        "pseudo_labels",
        "doubtful_pseudo_labels",
        "learner",
        "seed",
    )
    OPTION_NAME = "em"
    DISTRIBUTED = True  # with a learner that trains distributed (checked per request)

    def __init__(self, *, model_path: str, settings: AppSettings, description: str) -> None:
        super().__init__(model_path=model_path, settings=settings, description=description)
        self.model_dir = self.model_path.parent
        self.files = EMFiles(self.model_dir)

    def default_options(self, settings: AppSettings) -> Any:
        return EMOptions(epochs=settings.max_epochs, seed=settings.seed)

    def __call__(self, request: dict[str, Any], datastore: VersionedDatastore) -> dict[str, Any]:
        options = self.parse_request(request)
        settings = dataclasses.replace(self._settings, seed=options.seed)
        if world().distributed and (message := self.distributed_refusal(options)):
            raise InvalidRequestError(message)
        learner = load_learner(options.learner, settings=settings, model_dir=self.model_dir)
        items = datastore_items(datastore)
        if not any(item.label for item in items):
            raise InvalidRequestError("em needs labeled images (final or imported) to start")
        reviews = self.files.load_reviews()
        roc = operating_point(reviews, settings.target_sensitivity)
        review_threshold = options.review_threshold
        if roc and roc["meaningful"] and math.isfinite(roc["point"].threshold):
            review_threshold = min(float(roc["point"].threshold), options.correct_threshold)
        started, first = now_iso(), self.files.iteration() + 1
        model_file = self.model_dir / learner.model_file
        model_before = model_ref(model_file) if learner.trained else None
        # (an untrained learner's first M-step runs in the run: its pseudo-labels name it by
        # checksum, see _commit)
        rows: list[dict[str, Any]] = []

        def progress(row: dict[str, Any]) -> None:
            rows.append(row)
            self.write_stats(self._stats("RUNNING", started, options, rows, review_threshold, roc))

        with (
            shared_temporary_directory(prefix="emlabel-em-") as tmp,
            datastore.begin_run("em", stats_path=self.stats_path) as run,
        ):
            learned, learned_ref = self._learned_verifier(run, items, learner, settings)
            loop = EMLoop(
                learner=learner,
                settings=settings,
                options=options,
                reviews=structure_reviews(reviews),
                review_threshold=review_threshold,
                workdir=Path(tmp),
                on_iteration=progress,
                learned=learned,
                review_scores=scored_reviews(reviews),
                random_reviews=random_reviews(reviews),
            )
            result = loop.run(items, first_iteration=first)
            last = first + options.iterations - 1
            checksum = self._commit(
                run, learner, settings, result, last, learned_ref,
                pseudo_model={first: model_before},
            )  # fmt: skip
            if roc is not None:
                save_roc(roc["curve"], roc["point"], run.stage_path(self.files.roc_json),
                         run.stage_path(self.files.roc_png),
                         extra={k: roc[k] for k in ("sample", "meaningful", "note")})  # fmt: skip
            run.stage_json(self.files.state, {"iteration": last, "time": now_iso()})
            stats = self._stats("DONE", started, options, rows, review_threshold, roc)
            return self.write_stats(stats | {"model_sha256": checksum}, run=run)

    def distributed_refusal(self, options: EMOptions) -> str | None:
        """Why these options cannot run in several processes (None: they can)."""
        if options.learner in distributed_learners():
            return None
        return (
            f"learner {options.learner!r} trains in one process only; run em with it in one "
            f"process (several processes: {', '.join(distributed_learners())})"
        )

    def _learned_verifier(
        self, run: MethodRun, items: Sequence[EMItem], learner: Learner, settings: AppSettings
    ) -> tuple[LearnedVerifier | None, str | None]:
        """The stored learned verifier and its reference (``file@sha256:...``), retrained
        (staged in ``run``) when it is stale."""
        path = self.model_dir / VERIFIER_MODEL_FILE
        learned = load_learned(self.model_dir, settings)
        if not learner.trained or not is_stale(learned, items, model_available=True):
            return learned, model_ref(path) if learned is not None else None
        assert learned is not None  # is_stale is False without a verifier
        learned = train_from_items(items, learner, settings=settings, options=learned.options)
        checksum = run.stage_checkpoint(
            path, learned.state_dict(),
            learned.meta() | {"trained_at": now_iso(), "trained_by": "em",
                              "settings": settings_to_dict(settings)},
        )  # fmt: skip
        return learned, f"{path.name}@sha256:{checksum[:16]}"

    def _commit(
        self,
        run: MethodRun,
        learner: Learner,
        settings: AppSettings,
        result: EMResult,
        last: int,
        learned_ref: str | None,
        pseudo_model: dict[int, str | None],
    ) -> str:
        """Stage the model, store the pseudo-labels and corrections, buffer each judged
        image's verifier info. ``pseudo_model``: iteration -> the stored model that made
        its pseudo-labels (later iterations' come from models trained in this run)."""
        path = self.model_dir / learner.model_file
        meta = {"method": learner.name, "trained_by": "em", "labels": list(settings.labels),
                "settings": settings_to_dict(settings), "trained_at": now_iso(),
                "em_iteration": last}  # fmt: skip
        checksum = run.stage_checkpoint(
            path, learner.state_dict(), meta, extra=learner.checkpoint_extra()
        )
        model = f"{path.name}@sha256:{checksum[:16]}"
        written, stored = {}, {}  # image -> its last stored correction; pending tag -> stored
        for p in result.pseudo_labels:
            made_by = pseudo_model.get(p.iteration) or (
                f"{learner.model_file} of EM iteration {p.iteration - 1} (trained in this run, "
                f"not stored; weights sha256:{p.model_sha256[:16]})"
            )
            provenance = Provenance(
                kind=LabelKind.PSEUDO, source="em", version=0, iteration=p.iteration,
                model=made_by,
                reason=f"EM iteration {p.iteration}: the prediction of the model entering "
                "it, for an image without a label",
            )  # fmt: skip
            stored[p.tag] = run.add_version(p.image_id, p.path, provenance).tag
        for c in result.corrections:
            provenance = Provenance(
                kind=LabelKind.PSEUDO if c.pseudo else LabelKind.CORRECTED, source="em", version=0,
                parent=stored.get(c.parent, c.parent),
                iteration=c.iteration, model=model,
                scores={"probability_wrong": round(c.probability_wrong, 4)},
                reason=f"EM E-step: verifier {c.probability_wrong:.2f} wrong; expert: {c.reason}",
            )  # fmt: skip
            written[c.image_id] = run.add_version(c.image_id, c.path, provenance).tag
            stored[pending_tag(c.image_id, c.iteration)] = written[c.image_id]
        if result.last_run is not None:
            for d in result.last_decisions:
                info = result.last_run.info(
                    d.image_id, iteration=last, model=model, learned_model=learned_ref,
                    action=d.action, decision_reason=d.reason,
                )  # fmt: skip
                info["label_tag"] = stored.get(info["label_tag"], info["label_tag"])
                if d.image_id in written:
                    info["corrected_to"] = written[d.image_id]
                run.update_image_info(d.image_id, {VERIFIER_INFO_KEY: info})
        return checksum

    def _stats(self, state, started, options, iterations, review_threshold, roc) -> dict[str, Any]:
        point = roc["point"] if roc else None
        operating = None
        if point is not None:
            operating = {
                "threshold": point.threshold, "sensitivity": point.sensitivity,
                "specificity": point.specificity, "review_fraction": point.review_fraction,
                "target_sensitivity": point.target_sensitivity, "n_reviews": point.n,
                "auc": roc["curve"].auc, "sample": roc["sample"],
                "meaningful": roc["meaningful"], "note": roc["note"],
            }  # fmt: skip
        return {
            "state": state,
            "start_ts": started,
            "iterations": list(iterations),
            "options": dataclasses.asdict(options),
            "review_threshold": review_threshold,
            "operating_point": operating,
            "reviews": len(self.files.load_reviews()),
            "processes": world().size,
            "model_sha256": None,
        }
