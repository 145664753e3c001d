"""Review in the app: strategy ``verifier`` (what a human should look at next), records and
the review status ``/info`` shows (budget, reviews by routing, labels probably still wrong).

A human ``final`` saved for an image the strategy served is a review: the outcome (was the
machine label wrong?) is appended to ``model/em_reviews.json``, the ground truth the
verifier is recalibrated on and the ROC operating point is chosen from.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.strategy import Strategy

from emlabel.atomic import atomic_write_json
from emlabel.data.label_files import read_label
from emlabel.errors import EMLabelError
from emlabel.labels import LabelKind
from emlabel.labels.provenance import now_iso
from emlabel.labels.resolver import best_version
from emlabel.labels.versions import FINAL_TAG
from emlabel.methods.em import EMFiles, random_reviews, review_record
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.settings import AppSettings
from emlabel.verify import select_for_review
from emlabel.verify.budget import budget_report
from emlabel.verify.remaining import estimate_remaining_errors
from emlabel.verify.routing import Routing, next_routing, random_pick

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
        routing=routed.get("routing", Routing.VERIFIER),
    )
    atomic_write_json([*files.load_reviews(), record], files.reviews)
    outcome = {"reviewed": record["time"], "was_wrong": record["image_wrong"],
               "dice": record["dice"], "final_version": final.version}  # fmt: skip
    datastore.update_image_info(image_id, {REVIEW_INFO_KEY: routed | outcome})
    return record


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReviewScan:
    """What the datastore and the review records say about reviews in EM iteration
    ``iteration``."""

    iteration: int
    scores: dict[str, float]
    """Image -> its verifier score, for images without a human final (the unreviewed)."""
    served_now: frozenset[str]
    """Images served for review in this iteration."""
    reviewed: frozenset[str]
    """Images with a human final."""
    n_labeled: int
    """Images with a label (pseudo-labels included): the budget's base."""
    served: int
    """Reviews so far, over every iteration: the recorded ones and those served but not
    saved yet (what :func:`emlabel.verify.routing.next_routing` counts)."""
    served_random: int
    """Of those, drawn at random."""


def scan_reviews(
    states: Mapping[str, tuple[dict[str, Any], Sequence[Any]]],
    *,
    iteration: int,
    records: Sequence[Mapping[str, Any]],
) -> ReviewScan:
    """From one read of the datastore index (``datastore.image_states()``): scores, who was
    served and reviewed, the budget base; ``records`` (``model/em_reviews.json``) count the
    reviews done and how they were routed."""
    scores, served_now, reviewed = {}, set(), set()
    n_labeled = 0
    served = len(records)
    served_random = sum(r.get("routing") == Routing.RANDOM for r in records)
    for image_id, (info, versions) in states.items():
        n_labeled += best_version(versions, include_pseudo=True) is not None
        routed = info.get(REVIEW_INFO_KEY) or {}
        if "served" in routed and routed.get("iteration") == iteration:
            served_now.add(image_id)
        if any(v.tag == FINAL_TAG and not v.provenance.deleted for v in versions):
            reviewed.add(image_id)
            continue
        if "served" in routed and "reviewed" not in routed:  # served, not saved yet
            served += 1
            served_random += routed.get("routing") == Routing.RANDOM
        verdict = info.get(VERIFIER_INFO_KEY)
        if verdict and verdict.get("score") is not None:
            scores[image_id] = float(verdict["score"])
    return ReviewScan(
        iteration=iteration, scores=scores, served_now=frozenset(served_now),
        reviewed=frozenset(reviewed), n_labeled=n_labeled, served=served,
        served_random=served_random,
    )  # fmt: skip


def review_status(
    datastore: VersionedDatastore, *, settings: AppSettings, files: EMFiles
) -> dict[str, Any]:
    """``/info``'s ``emlabel_review``: this iteration's budget, the reviews so far by how they
    were routed, and how many labels are probably still wrong (:mod:`emlabel.verify.remaining`)."""
    records = files.load_reviews()
    scan = scan_reviews(datastore.image_states(), iteration=files.iteration() + 1, records=records)
    budget = budget_report(
        len(scan.served_now), budget_fraction=settings.review_budget, n_labeled=scan.n_labeled
    )
    estimate = estimate_remaining_errors(
        list(scan.scores.values()),
        random_reviews(records),
        target_sensitivity=settings.target_sensitivity,
    )
    by_routing = {r.value: sum(x.get("routing", Routing.VERIFIER) == r for x in records)
                  for r in Routing}  # fmt: skip
    return {
        "iteration": scan.iteration,
        "budget": budget.to_dict(),
        "random_share": settings.review_random_share,
        "reviews": by_routing,
        "remaining_errors": estimate.to_dict(),
    }


class VerifierStrategy(Strategy):
    """Strategy ``verifier``: the unreviewed image whose label the system trusts least, or,
    for a share of the reviews, a random unreviewed one (:mod:`emlabel.verify.routing`).

    Hands out at most ``review_budget`` of the labeled images per EM iteration (distinct
    images) and answers with the score, the top reasons and how the image was routed.
    """

    def __init__(self, *, settings: AppSettings, model_dir: str) -> None:
        super().__init__(
            "Verifier disagreement: least trusted label first (a share at random), within "
            "the review budget"
        )
        self.settings = settings
        self.files = EMFiles(Path(model_dir))

    def __call__(
        self, request: dict[str, Any], datastore: VersionedDatastore
    ) -> dict[str, Any] | None:
        scan = scan_reviews(
            datastore.image_states(), iteration=self.files.iteration() + 1,
            records=self.files.load_reviews(),
        )  # fmt: skip
        budget_fraction = self.settings.review_budget
        budget = budget_report(
            len(scan.served_now), budget_fraction=budget_fraction, n_labeled=scan.n_labeled
        )
        open_ids = set(scan.scores) - scan.served_now
        routing = next_routing(
            served=scan.served, served_random=scan.served_random,
            random_share=self.settings.review_random_share,
        )  # fmt: skip
        image_id = None
        if budget.remaining and routing == Routing.RANDOM:
            seed = f"{self.settings.seed}:{scan.iteration}:{scan.served}"
            image_id = random_pick(open_ids, seed=seed)
        elif budget.remaining:
            chosen = select_for_review(
                scan.scores, already_reviewed=scan.served_now | scan.reviewed,
                budget_fraction=budget_fraction, n_labeled=scan.n_labeled,
                used=len(scan.served_now),
            )  # fmt: skip
            image_id = chosen[0] if chosen else None
        if image_id is None:
            logger.info(
                "verifier strategy: nothing to offer (budget %s/%s used)",
                budget.used,
                budget.budget,
            )
            return None
        verdict = datastore.get_image_info(image_id)[VERIFIER_INFO_KEY]
        served_info = {"iteration": scan.iteration, "served": now_iso(),
                       "score": verdict["score"], "routing": routing.value}  # fmt: skip
        datastore.update_image_info(image_id, {REVIEW_INFO_KEY: served_info})
        review_seg = None
        if verdict.get("label_tag"):
            try:  # the label under review, openable in the viewer (DICOMweb: a SEG)
                review_seg = datastore.offer_for_review(image_id, verdict["label_tag"])
            except EMLabelError as e:  # the review still works over REST
                logger.warning("label under review of %s not put on the server: %s",
                               image_id, e.message)  # fmt: skip
        reasons = verdict.get("reasons", [])
        reason = "; ".join(reasons[:1]) or "highest verifier score"
        if routing == Routing.RANDOM:
            reason = (
                f"random draw among {len(open_ids)} unreviewed labels (a "
                f"{self.settings.review_random_share:.0%} share of the reviews: the unbiased "
                "sample the operating point and the remaining-errors estimate are fitted on)"
            )
        return {
            "id": image_id,
            "score": verdict["score"],
            "reasons": reasons,
            "reason": reason,
            "routing": routing.value,
            "budget": {"used": budget.used + 1, "budget": budget.budget,
                       "iteration": scan.iteration},
            "label_tag": verdict.get("label_tag"),
            "review_seg": review_seg,
        }  # fmt: skip
