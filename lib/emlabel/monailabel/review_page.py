"""``GET /emlabel/review/``: the review queue as a plain HTML page, readable without a viewer.

What the ``verifier`` strategy would hand out, in its order (least trusted label first;
the first ``budget remaining`` of them fit this iteration's budget), each with its score,
its top reasons, the structure in doubt and the label under review; the cases served but
not saved yet; the cases reviewed so far with their outcome; the budget, the random share
and how many labels are probably still wrong; and (DICOMweb mode) the SEGs a viewer stored
that were not taken in, with the reason. In DICOMweb mode each case links to its study
in OHIF. Everything shown comes from the datastore and is HTML-escaped (image ids and
reasons are data, never markup). Rendered by the server; no JavaScript.
"""

from __future__ import annotations

import dataclasses
import html
import urllib.parse
from collections.abc import Sequence
from typing import Any

from emlabel.dicomweb.intake import SegProblem
from emlabel.methods.em import EMFiles, random_reviews
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.review import REVIEW_INFO_KEY, VERIFIER_INFO_KEY, scan_reviews
from emlabel.settings import AppSettings
from emlabel.verify import select_for_review
from emlabel.verify.budget import budget_report
from emlabel.verify.remaining import estimate_remaining_errors


@dataclasses.dataclass(frozen=True, kw_only=True)
class QueuedCase:
    image_id: str
    score: float
    reasons: list[str]
    worst_structure: str | None
    label_tag: str | None
    study_uid: str | None
    within_budget: bool
    served: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReviewedCase:
    image_id: str
    reviewed: str
    was_wrong: bool | None
    dice: float | None
    routing: str
    study_uid: str | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReviewQueue:
    iteration: int
    budget: dict[str, Any]
    random_share: float
    remaining: dict[str, Any]
    queue: list[QueuedCase]
    reviewed: list[ReviewedCase]
    problems: list[SegProblem] = dataclasses.field(default_factory=list)
    """Labels another tool stored that were not taken in (DICOMweb mode), oldest first."""


def review_queue(
    datastore: VersionedDatastore, *, settings: AppSettings, files: EMFiles
) -> ReviewQueue:
    """The queue in the strategy's order, and what was reviewed (one read of the index)."""
    records = files.load_reviews()
    states = datastore.image_states()
    scan = scan_reviews(states, iteration=files.iteration() + 1, records=records)
    budget = budget_report(
        len(scan.served_now), budget_fraction=settings.review_budget, n_labeled=scan.n_labeled
    )
    order = select_for_review(
        scan.scores, already_reviewed=scan.reviewed, budget_fraction=1.0,
        n_labeled=max(scan.n_labeled, len(scan.scores)),
    )  # fmt: skip
    queue, reviewed, offered = [], [], 0
    for image_id in order:
        info = states[image_id][0]
        verdict = info.get(VERIFIER_INFO_KEY) or {}
        served = image_id in scan.served_now
        within = served or offered < budget.remaining
        offered += not served
        queue.append(
            QueuedCase(
                image_id=str(image_id), score=float(verdict.get("score", 0.0)),
                reasons=[str(r) for r in verdict.get("reasons", [])[:3]],
                worst_structure=verdict.get("worst_structure"),
                label_tag=verdict.get("label_tag"), study_uid=info.get("StudyInstanceUID"),
                within_budget=within, served=served,
            )
        )  # fmt: skip
    for image_id, (info, _) in sorted(states.items()):
        routed = info.get(REVIEW_INFO_KEY) or {}
        if "reviewed" in routed:
            reviewed.append(
                ReviewedCase(
                    image_id=image_id, reviewed=str(routed["reviewed"]),
                    was_wrong=routed.get("was_wrong"), dice=routed.get("dice"),
                    routing=str(routed.get("routing", "verifier")),
                    study_uid=info.get("StudyInstanceUID"),
                )
            )  # fmt: skip
    reviewed.sort(key=lambda c: c.reviewed, reverse=True)
    estimate = estimate_remaining_errors(
        list(scan.scores.values()), random_reviews(records),
        target_sensitivity=settings.target_sensitivity,
    )  # fmt: skip
    return ReviewQueue(
        iteration=scan.iteration, budget=budget.to_dict(), random_share=settings.review_random_share,
        remaining=estimate.to_dict(), queue=queue, reviewed=reviewed,
        problems=datastore.intake_problems(),
    )  # fmt: skip


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _study_link(case_id: str, study_uid: str | None, ohif: str) -> str:
    """The image id, linked to its study in OHIF when it has one (DICOMweb mode)."""
    if not study_uid:
        return f"<code>{_e(case_id)}</code>"
    url = f"{ohif}?StudyInstanceUIDs={urllib.parse.quote(study_uid, safe='')}"
    return f'<a href="{_e(url)}"><code>{_e(case_id)}</code></a> (OHIF)'


def _remaining_text(remaining: dict[str, Any]) -> str:
    if not remaining.get("meaningful"):
        return _e(remaining.get("reason", "not meaningful yet"))
    low, high = remaining.get("probably_wrong_interval") or (None, None)
    return _e(
        f"about {remaining['probably_wrong']:.1f} labels probably still wrong (interval "
        f"{low:.1f}-{high:.1f}); {remaining['reviews_needed']} more reviews would catch "
        f"{remaining['target_sensitivity']:.0%} of them"
    )


def render_review_page(queue: ReviewQueue, *, ohif_viewer: str = "/ohif/viewer") -> str:
    """The page's HTML (every value escaped)."""
    b = queue.budget
    rows = []
    for rank, case in enumerate(queue.queue, start=1):
        state = "served, not saved yet" if case.served else (
            "next" if rank == 1 else ("within budget" if case.within_budget else "over budget")
        )  # fmt: skip
        reasons = "".join(f"<li>{_e(r)}</li>" for r in case.reasons) or "<li>-</li>"
        rows.append(
            f"<tr><td>{rank}</td><td>{_study_link(case.image_id, case.study_uid, ohif_viewer)}"
            f"</td><td>{case.score:.3f}</td><td>{_e(case.worst_structure or '-')}</td>"
            f"<td><ul>{reasons}</ul></td><td><code>{_e(case.label_tag or '-')}</code></td>"
            f"<td>{_e(state)}</td></tr>"
        )
    done = [
        f"<tr><td>{_study_link(c.image_id, c.study_uid, ohif_viewer)}</td><td>{_e(c.reviewed)}"
        f"</td><td>{_e(_outcome(c))}</td><td>{_e(c.routing)}</td></tr>"
        for c in queue.reviewed
    ]
    queue_table = _table(
        ["#", "image", "score", "structure in doubt", "top reasons", "label under review",
         "state"],
        rows, "No unreviewed label has a verifier score yet.",
    )  # fmt: skip
    done_table = _table(["image", "reviewed", "outcome", "routing"], done, "No review saved yet.")
    problem_rows = [
        f"<tr><td>{_study_link(p.image_id, p.study_uid, ohif_viewer)}</td>"
        f"<td><code>{_e(p.seg_series_uid)}</code></td><td>{_e(p.reason)}</td>"
        f"<td>{_e(p.time)}</td></tr>"
        for p in queue.problems
    ]
    problem_table = _table(
        ["image", "DICOM-SEG series", "why it was not taken in", "found"], problem_rows,
        "Every label stored on the DICOMweb server was taken in.",
    )  # fmt: skip
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>EMLabel review queue</title>',
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 8px;vertical-align:top}"
        "ul{margin:0;padding-left:1.2em}</style></head><body>",
        "<h1>Review queue</h1>",
        f"<p>EM iteration {queue.iteration}: review budget {b['used']} of {b['budget']} used "
        f"({b['budget_fraction']:.0%} of {b['n_labeled']} labeled images), {b['remaining']} "
        f"left; {queue.random_share:.0%} of the reviews are drawn at random (the unbiased "
        "sample the operating point is fitted on), so the next case may be a random one.</p>",
        f"<p>Remaining errors: {_remaining_text(queue.remaining)}</p>",
        "<h2>To review, least trusted label first</h2>",
        queue_table,
        "<h2>Reviewed</h2>",
        done_table,
        "<h2>Labels not taken in</h2>",
        "<p>Segmentations saved from a viewer that EMLabel could not use; fix and save again "
        "(a new save is a new series).</p>"
        if queue.problems
        else "",
        problem_table,
        "</body></html>",
    ]
    return "\n".join(parts)


def _outcome(case: ReviewedCase) -> str:
    if case.was_wrong is None:
        return "-"
    dice = f" (Dice to the machine label {case.dice:.3f})" if case.dice is not None else ""
    return (
        "the machine label was wrong" if case.was_wrong else "the machine label was right"
    ) + dice


def _table(headers: Sequence[str], rows: Sequence[str], empty: str) -> str:
    if not rows:
        return f"<p>{_e(empty)}</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"
