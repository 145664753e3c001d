"""Random share of the reviews, the operating point on them, the remaining-errors estimate."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emlabel.methods.em import operating_point
from emlabel.verify.remaining import estimate_remaining_errors, reviews_to_catch
from emlabel.verify.routing import Routing, next_routing, random_pick


def routings(share: float, n: int) -> list[str]:
    out, served_random = [], 0
    for served in range(n):
        r = next_routing(served=served, served_random=served_random, random_share=share)
        served_random += r == Routing.RANDOM
        out.append(r.value[0])
    return out


def test_the_running_random_share_reaches_the_setting_and_never_exceeds_it():
    assert "".join(routings(0.2, 10)) == "vvvvrvvvvr"
    assert "".join(routings(0.5, 4)) == "vrvr"
    assert set(routings(0.0, 20)) == {"v"} and set(routings(1.0, 5)) == {"r"}
    for share in (0.1, 0.25, 0.3, 0.7):
        seq = routings(share, 40)
        running = np.cumsum([s == "r" for s in seq]) / np.arange(1, 41)
        assert (running <= share + 1e-9).all() and abs(running[-1] - share) < 1 / 40 + 1e-9
    with pytest.raises(ValueError, match="random_share"):
        next_routing(served=0, served_random=0, random_share=1.5)


def test_random_pick_is_uniform_reproducible_and_none_when_empty():
    ids = {f"case_{i}" for i in range(10)}
    assert random_pick(ids, seed="0:1:4") == random_pick(set(sorted(ids)), seed="0:1:4")
    picks = [random_pick(ids, seed=f"s{k}") for k in range(2000)]
    counts = np.array([picks.count(i) for i in sorted(ids)])
    assert counts.min() > 140 and counts.max() < 260  # 200 expected each
    assert random_pick(set(), seed="x") is None


def test_the_estimate_needs_random_reviews_and_covers_the_truth():
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=400)
    wrong = rng.uniform(size=400) < 0.6 * scores  # the verifier ranks, its level is off
    early = estimate_remaining_errors(
        scores[40:], list(zip(scores[:4], wrong[:4], strict=True)), target_sensitivity=0.9
    )
    assert not early.meaningful and early.probably_wrong is None and "needs 5" in early.reason
    random_reviews = list(zip(scores[:40], wrong[:40], strict=True))
    est = estimate_remaining_errors(scores[40:], random_reviews, target_sensitivity=0.9)
    truth = int(wrong[40:].sum())
    assert est.meaningful and est.n_unreviewed == 360 and est.n_random_reviews == 40
    low, high = est.probably_wrong_interval
    assert low <= truth <= high and low < est.probably_wrong < high
    assert est.wrong_rate == pytest.approx(wrong[:40].mean())
    # reviews needed: fewer than all (the verifier ranks), more than the expected wrong count
    assert est.probably_wrong < est.reviews_needed < 360
    assert est.to_dict()["probably_wrong_interval"] == [round(low, 4), round(high, 4)]


def test_reviews_to_catch_counts_most_likely_first():
    p = np.array([0.9, 0.05, 0.05, 0.0])
    assert reviews_to_catch(p, 0.9) == 1 and reviews_to_catch(p, 0.95) == 2
    assert reviews_to_catch(p, 1.0) == 3 and reviews_to_catch(np.zeros(3), 0.9) == 0


def record(score: float, wrong: bool, routing: str) -> dict:
    return {"image_score": score, "image_wrong": wrong, "routing": routing}


def test_the_operating_point_uses_random_reviews_once_they_hold_both_classes():
    # the verifier's own picks: all high scores, a biased sample
    routed = [record(0.9, True, "verifier"), record(0.8, False, "verifier")] * 3
    biased = operating_point(routed, 0.95)
    assert biased is not None and not biased["meaningful"] and biased["sample"] == "all"
    assert "not meaningful" in biased["note"]
    randoms = [record(s, s > 0.5, "random") for s in (0.1, 0.2, 0.3, 0.6, 0.7, 0.9)]
    fair = operating_point(routed + randoms, 0.95)
    assert fair["meaningful"] and fair["sample"] == "random" and fair["point"].n == 6
    assert fair["curve"].auc == 1.0
    assert operating_point([record(0.5, True, "random")], 0.95) is None


def test_the_em_doubtful_pseudo_labels_option_is_a_typed_boolean():
    from emlabel.errors import InvalidRequestError
    from emlabel.methods.em import EMOptions
    from emlabel.monailabel.em import EMTrainTask
    from emlabel.monailabel.tasks import parse_options

    keys = EMTrainTask.REQUEST_KEYS
    parsed = parse_options({"doubtful_pseudo_labels": "false"}, EMOptions(), keys, what="em")
    assert parsed.doubtful_pseudo_labels is False
    with pytest.raises(InvalidRequestError, match="doubtful_pseudo_labels"):
        parse_options({"doubtful_pseudo_labels": "maybe"}, EMOptions(), keys, what="em")


def test_the_review_page_escapes_what_the_datastore_holds_and_links_studies_to_ohif():
    from emlabel.monailabel.review_page import QueuedCase, ReviewQueue, render_review_page

    hostile = "<script>alert(1)</script>"
    case = QueuedCase(
        image_id=hostile, score=0.9, reasons=[f"reason {hostile}"], worst_structure="liver",
        label_tag="noisy", study_uid="1.2.3&x", within_budget=True, served=False,
    )  # fmt: skip
    queue = ReviewQueue(
        iteration=1,
        budget={"used": 0, "budget": 1, "remaining": 1, "budget_fraction": 0.05, "n_labeled": 6},
        random_share=0.2,
        remaining={"meaningful": False, "reason": "not meaningful yet: 0 random review(s)"},
        queue=[case], reviewed=[],
    )  # fmt: skip
    page = render_review_page(queue)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "StudyInstanceUIDs=1.2.3%26x" in page and "not meaningful yet" in page
    assert "review budget 0 of 1 used" in page and "next" in page
    assert "Every label stored on the DICOMweb server was taken in." in page

    from emlabel.dicomweb.intake import SegProblem

    problem = SegProblem(seg_series_uid="9.9", image_id="1.5", study_uid="1.2",
                         reason=f"segment 1 is named '{hostile}'")  # fmt: skip
    page = render_review_page(dataclasses.replace(queue, problems=[problem]))
    assert "<script>" not in page and "segment 1 is named &#x27;&lt;script&gt;" in page
    assert "<code>9.9</code>" in page and "StudyInstanceUIDs=1.2" in page


def test_seg_problems_are_kept_in_one_file_and_a_damaged_file_starts_afresh(tmp_path):
    from emlabel.dicomweb.intake import SegProblem, load_problems, record_problem

    path = tmp_path / "problems.json"
    assert load_problems(path) == {}
    a = SegProblem(seg_series_uid="1", image_id="i", study_uid="s", reason="empty")
    b = SegProblem(seg_series_uid="2", image_id="i", study_uid="s", reason="off grid")
    record_problem(path, a)
    assert load_problems(record_problem(path, b) and path) == {"1": a, "2": b}
    path.write_text("{not json", encoding="utf-8")
    assert load_problems(path) == {}
