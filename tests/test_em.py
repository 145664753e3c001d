"""E-step decision rule, majority vote, ROC operating point from review records."""

import numpy as np
import pytest

from emlabel.errors import SettingsError
from emlabel.methods.em import EMOptions, decide, majority, operating_point
from emlabel.verify import ImageVerdict


class Choice:
    def __init__(self, changed: bool) -> None:
        self.changed = changed
        self.best = "model" if changed else "current"
        self.reason = "model wins 1-0"


def verdict(p: float) -> ImageVerdict:
    return ImageVerdict(
        image_id="x", probability_wrong=p, probability_any_wrong=p, worst_structure="liver",
        reasons=["liver: Dice to model ensemble 0.40"], structures={},
    )  # fmt: skip


def test_decide():
    kw = {"correct_threshold": 0.8, "review_threshold": 0.5}
    assert decide(verdict(0.9), Choice(True), **kw).action == "correct"
    assert decide(verdict(0.9), Choice(False), **kw).action == "review"
    assert decide(verdict(0.9), None, **kw).action == "review"
    assert decide(verdict(0.6), Choice(True), **kw).action == "review"
    assert decide(verdict(0.2), Choice(True), **kw).action == "accept"
    assert "Dice" in decide(verdict(0.6), None, **kw).reason


def test_options_are_validated():
    EMOptions().validate()
    with pytest.raises(SettingsError, match="review_threshold"):
        EMOptions(review_threshold=0.9, correct_threshold=0.8).validate()


def test_majority_vote():
    a = np.array([[0, 1], [2, 2]])
    b = np.array([[0, 1], [1, 2]])
    c = np.array([[1, 0], [1, 0]])
    assert majority([a, b, c]).tolist() == [[0, 1], [1, 2]]


def test_operating_point_from_reviews():
    records = [
        {"image_score": s, "image_wrong": w}
        for s, w in [
            (0.9, True),
            (0.8, True),
            (0.7, False),
            (0.6, True),
            (0.3, False),
            (0.2, False),
        ]
    ]
    point = operating_point(records, 0.95)["point"]
    assert point.threshold == pytest.approx(0.6)
    assert point.sensitivity == 1.0 and point.specificity == pytest.approx(2 / 3)
    assert operating_point(records[:2], 0.95) is None  # no good label reviewed yet


def test_the_learner_registry_matches_the_em_option():
    from emlabel.learners import LEARNERS
    from emlabel.methods.em.options import LEARNER_NAMES

    assert set(LEARNERS) == set(LEARNER_NAMES)
    import pytest

    from emlabel.errors import SettingsError
    from emlabel.methods.em import EMOptions

    with pytest.raises(SettingsError, match="valid: segmentation, aide, cgs"):
        EMOptions(learner="nnunet").validate()
