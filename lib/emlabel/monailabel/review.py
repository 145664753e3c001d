"""Review in the app: strategy ``verifier`` (what a human should look at next) and records.

A human ``final`` saved for an image the strategy served is a review: the outcome (was the
machine label wrong?) is appended to ``model/em_reviews.json``, the ground truth the
verifier is recalibrated on and the ROC operating point is chosen from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.strategy import Strategy

from emlabel.atomic import atomic_write_json
from emlabel.data.label_files import read_label
from emlabel.labels import LabelKind
from emlabel.labels.provenance import now_iso
from emlabel.methods.em import EMFiles, review_record
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.settings import AppSettings
from emlabel.verify import select_for_review
from emlabel.verify.budget import budget_report

logger = logging.getLogger(__name__)

VERIFIER_INFO_KEY = "emlabel.verifier"
REVIEW_INFO_KEY = "emlabel.review"


def record_review(
    datastore: VersionedDatastore, image_id: str, *, settings: AppSettings, files: EMFiles
) -> dict[str, Any] | None:
    """A human ``final`` on a routed image: compare it with the judged machine label."""
    image_info = datastore.get_image_info(image_id)
    judged = image_info.get(VERIFIER_INFO_KEY)
    routed = image_info.get(REVIEW_INFO_KEY) or {}
    if not judged or not judged.get("features") or "served" not in routed:
        return None  # only images the verifier strategy sent to a human are reviews
    versions = {v.tag: v for v in datastore.versions(image_id)}
    tag, final = judged.get("label_tag"), versions.get("final")
    if final is None or tag not in versions or versions[tag].kind == LabelKind.HUMAN:
        return None
    if routed.get("final_version") == final.version:
        return None  # this final was already counted
    final_array = read_label(datastore.get_label_uri(image_id, "final"), settings=settings)
    machine = read_label(datastore.get_label_uri(image_id, tag), settings=settings)
    if final_array.shape != machine.shape:
        return None
    record = review_record(
        image_id=image_id,
        machine=machine,
        final=final_array,
        judged=judged,
        label_map=settings.label_map,
        wrong_dice=settings.review_wrong_dice,
        time=now_iso(),
    )
    atomic_write_json([*files.load_reviews(), record], files.reviews)
    outcome = {"reviewed": record["time"], "was_wrong": record["image_wrong"],
               "dice": record["dice"], "final_version": final.version}  # fmt: skip
    datastore.update_image_info(image_id, {REVIEW_INFO_KEY: routed | outcome})
    return record


class VerifierStrategy(Strategy):
    """Strategy ``verifier``: the unreviewed image whose label the system trusts least.

    Hands out at most ``review_budget`` of the labeled images per EM iteration (distinct
    images), most doubtful first, and answers with the score and the top reasons.
    """

    def __init__(self, *, settings: AppSettings, model_dir: str) -> None:
        super().__init__(
            "Verifier disagreement: least trusted label first, within the review budget"
        )
        self.settings = settings
        self.files = EMFiles(Path(model_dir))

    def __call__(
        self, request: dict[str, Any], datastore: VersionedDatastore
    ) -> dict[str, Any] | None:
        iteration = self.files.iteration() + 1
        scores, served, reviewed, labeled = {}, set(), set(), 0
        for image_id in datastore.list_images():
            info = datastore.get_image_info(image_id)
            labeled += datastore.best_label(image_id) is not None
            verdict = info.get(VERIFIER_INFO_KEY)
            if (info.get(REVIEW_INFO_KEY) or {}).get("iteration") == iteration:
                served.add(image_id)
            if "final" in datastore.get_labels_by_image_id(image_id):
                reviewed.add(image_id)
            if verdict and verdict.get("score") is not None:
                scores[image_id] = float(verdict["score"])
        budget_fraction, n_used = self.settings.review_budget, len(served)
        chosen = select_for_review(
            scores, already_reviewed=served | reviewed, budget_fraction=budget_fraction,
            n_labeled=labeled, used=n_used,
        )  # fmt: skip
        budget = budget_report(
            n_used + bool(chosen), budget_fraction=budget_fraction, n_labeled=labeled
        )
        if not chosen:
            logger.info(
                "verifier strategy: nothing to offer (budget %s/%s used)",
                budget.used,
                budget.budget,
            )
            return None
        image_id = chosen[0]
        verdict = datastore.get_image_info(image_id)[VERIFIER_INFO_KEY]
        served_info = {"iteration": iteration, "served": now_iso(), "score": verdict["score"]}
        datastore.update_image_info(image_id, {REVIEW_INFO_KEY: served_info})
        reasons = verdict.get("reasons", [])
        return {
            "id": image_id,
            "score": verdict["score"],
            "reasons": reasons,
            "reason": "; ".join(reasons[:1]) or "highest verifier score",
            "budget": {"used": budget.used, "budget": budget.budget, "iteration": iteration},
        }
