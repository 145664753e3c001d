"""Label Verifier, Label Expert, ROC operating point and review budget on tiny synthetic maps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from emlabel.verify import (
    DISTANCE_CAP_MM,
    SIGNALS,
    LabelExpert,
    LabelVerifier,
    Review,
    ShapePopulation,
    StructureFeatures,
    budget_report,
    choose_threshold,
    compute_signals,
    review_budget,
    roc_curve,
    save_roc,
    select_for_review,
    structure_features,
)

SHAPE = (24, 24, 24)
SPACING = (1.5, 1.5, 2.0)
LIVER, SPLEEN, LESION = 1, 2, 6


def ball(center: tuple[float, float, float], radius: float) -> np.ndarray:
    grid = np.indices(SHAPE, dtype=float)
    return sum((grid[i] - center[i]) ** 2 for i in range(3)) <= radius**2


def make_label(liver_hi: int = 14, spleen_hi: int = 13) -> np.ndarray:
    """Liver box with a lesion ball inside it, and a spleen box."""
    label = np.zeros(SHAPE, np.int16)
    label[2:liver_hi, 3:21, 3:21] = LIVER
    label[ball((8, 12, 12), 2.5)] = LESION
    label[16:22, 5:spleen_hi, 6:14] = SPLEEN
    return label


def second_member(label: np.ndarray, liver_hi: int = 14, spleen_hi: int = 13) -> np.ndarray:
    """A second ensemble member: the label with one more liver and spleen slice."""
    member = label.copy()
    member[liver_hi, 3:21, 3:21] = LIVER
    member[16:22, spleen_hi, 6:14] = SPLEEN
    return member


CLEAN = make_label()
PREDICTIONS = [CLEAN, second_member(CLEAN)]


def shifted_spleen() -> np.ndarray:
    label = CLEAN.copy()
    label[label == SPLEEN] = 0
    label[16:22, 9:17, 6:14] = SPLEEN  # 4 voxels (6 mm) towards +y
    return label


def eroded_liver() -> np.ndarray:
    """The liver's outer surface peeled by one voxel (the lesion stays enclosed)."""
    label = CLEAN.copy()
    organ = (label == LIVER) | (label == LESION)
    label[organ & ~ndimage.binary_erosion(organ) & (label == LIVER)] = 0
    return label


def lesion_outside() -> np.ndarray:
    label = CLEAN.copy()
    label[label == LESION] = LIVER
    label[ball((20, 20, 20), 2.5) & (label == 0)] = LESION
    return label


def spurious_blobs() -> np.ndarray:
    label = CLEAN.copy()
    label[20:22, 18:20, 2:4] = SPLEEN
    label[5:7, 22:24, 20:22] = SPLEEN
    return label


@pytest.fixture(scope="module")
def population() -> ShapePopulation:
    """Accepted labels: five clean variants, each with its own two-member ensemble."""
    records: list[StructureFeatures] = []
    for i, (liver_hi, spleen_hi) in enumerate([(13, 12), (14, 13), (15, 13), (14, 14), (13, 13)]):
        label = make_label(liver_hi, spleen_hi)
        members = [label, second_member(label, liver_hi, spleen_hi)]
        records += structure_features(label, members, spacing=SPACING, image_id=f"a{i}").values()
    return ShapePopulation.fit(records)


# --- features -----------------------------------------------------------------------------


def test_features_of_clean_label() -> None:
    feats = structure_features(CLEAN, PREDICTIONS, spacing=SPACING, image=CLEAN * 10.0)
    liver, lesion, kidney = feats["liver"], feats["lesion"], feats["kidney"]
    assert liver.volume_mm3 == pytest.approx(np.count_nonzero(CLEAN == LIVER) * 4.5)
    assert liver.n_components == 1 and liver.largest_component_fraction == 1.0
    assert 0.9 < liver.dice_to_ensemble_mean < 1.0  # the second member has one more slice
    assert liver.ensemble_disagreement > 0.0
    assert lesion.parent == "liver" and lesion.contained_in == 1.0
    assert lesion.intensity_mean == 60.0 and lesion.intensity_std == 0.0
    # absent everywhere: perfect agreement, no components, nothing to measure inside
    assert kidney.empty and kidney.dice_to_ensemble_mean == 1.0 and kidney.assd_mm == 0.0
    assert kidney.n_components == 0 and kidney.intensity_mean is None


def test_features_empty_label_or_prediction_and_options() -> None:
    no_spleen = CLEAN.copy()
    no_spleen[no_spleen == SPLEEN] = 0
    missing = structure_features(no_spleen, PREDICTIONS, spacing=SPACING)["spleen"]
    assert missing.dice_to_ensemble_mean == 0.0
    assert missing.assd_mm == missing.hd95_mm == DISTANCE_CAP_MM
    assert missing.ensemble_present_fraction == 1.0
    extra = structure_features(CLEAN, [no_spleen], spacing=SPACING)["spleen"]
    assert extra.dice_to_ensemble_mean == 0.0 and extra.ensemble_present_fraction == 0.0
    alone = structure_features(CLEAN, [], spacing=SPACING)["spleen"]
    assert alone.dice_to_ensemble_mean is None and alone.n_members == 0

    blobs = structure_features(spurious_blobs(), [], spacing=SPACING)["spleen"]
    assert blobs.n_components == 3 and blobs.largest_component_fraction < 1.0
    # containment by value; {} switches it off
    out = structure_features(lesion_outside(), [], spacing=SPACING, containment={LESION: LIVER})
    assert out["lesion"].parent == "liver" and out["lesion"].contained_in == 0.0
    assert structure_features(CLEAN, [], spacing=SPACING, containment={})["lesion"].parent is None
    with pytest.raises(ValueError, match="unknown structure"):
        structure_features(CLEAN, [], spacing=SPACING, containment={"tumour": "liver"})
    assert StructureFeatures.from_dict(json.loads(json.dumps(blobs.to_dict()))) == blobs


def test_population_volume_percentile(population: ShapePopulation) -> None:
    big = structure_features(make_label(spleen_hi=20), [], spacing=SPACING)["spleen"]
    typical = structure_features(make_label(spleen_hi=13), [], spacing=SPACING)["spleen"]
    big_score, typical_score = population.volume_score(big), population.volume_score(typical)
    assert big_score.percentile == 100.0 and big_score.z > 3
    assert 20 < typical_score.percentile < 80 and abs(typical_score.z) < 1
    assert population.typical_components("spleen") == 1
    assert population.volume_score(structure_features(CLEAN, [], spacing=SPACING)["kidney"]) is None
    restored = ShapePopulation.from_dict(json.loads(json.dumps(population.to_dict())))
    assert restored.volume_score(big) == big_score


# --- verifier -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("broken", "structure", "expected_reason"),
    [
        (shifted_spleen, "spleen", "Dice to model ensemble"),
        (eroded_liver, "liver", "Dice to model ensemble"),
        (lesion_outside, "lesion", "lesion 100% outside liver"),
        (spurious_blobs, "spleen", "3 connected components (usually 1)"),
    ],
)
def test_verifier_ranks_broken_label_above_clean_twin(
    population: ShapePopulation, broken, structure: str, expected_reason: str
) -> None:
    verifier = LabelVerifier()
    clean = verifier.score_image(
        structure_features(CLEAN, PREDICTIONS, spacing=SPACING), population, image_id="clean"
    )
    bad = verifier.score_image(
        structure_features(broken(), PREDICTIONS, spacing=SPACING), population, image_id="bad"
    )
    assert clean.probability_wrong < 0.15 and clean.reasons == []
    assert bad.probability_wrong > clean.probability_wrong + 0.15
    verdict = bad.structures[structure]
    assert verdict.probability_wrong == bad.probability_wrong
    assert any(expected_reason in r for r in verdict.reasons), verdict.reasons
    assert any(expected_reason in r for r in bad.reasons), bad.reasons
    assert verdict.probability_wrong > clean.structures[structure].probability_wrong + 0.15


def test_verifier_reasons_without_ensemble_and_most_important_first(
    population: ShapePopulation,
) -> None:
    verifier = LabelVerifier()
    verdict = verifier.score(
        structure_features(lesion_outside(), [], spacing=SPACING)["lesion"], population
    )
    assert verdict.reasons[0] == "lesion 100% outside liver"
    assert verdict.signals["outside_parent"] == 1.0 and verdict.signals["dice_deficit"] == 0.0
    shifted = verifier.score(
        structure_features(shifted_spleen(), PREDICTIONS, spacing=SPACING)["spleen"], population
    )
    contributions = [shifted.contributions[s] for s in shifted.reason_signals]
    assert contributions == sorted(contributions, reverse=True) and len(contributions) >= 2
    no_spleen = CLEAN.copy()
    no_spleen[no_spleen == SPLEEN] = 0
    missing = verifier.score(
        structure_features(no_spleen, PREDICTIONS, spacing=SPACING)["spleen"], population
    )
    assert missing.probability_wrong > 0.9
    assert missing.reasons[0].startswith("label has no spleen but 2/2 models find it")
    assert "label has no spleen but 100% of accepted labels have it" in missing.reasons


def _synthetic_reviews(n_each: int) -> list[Review]:
    """Reviews whose wrong labels have extra components, the right ones do not."""
    rng = np.random.default_rng(0)
    reviews = []
    for i in range(n_each):
        for wrong in (True, False):
            reviews.append(
                Review(
                    features=StructureFeatures(
                        structure="spleen",
                        value=SPLEEN,
                        volume_mm3=1000.0,
                        n_components=int(rng.integers(3, 6)) if wrong else 1 + i % 2,
                        largest_component_fraction=float(rng.uniform(0.85, 1.0)),
                        n_members=2,
                        ensemble_present_fraction=1.0,
                        dice_to_ensemble_mean=float(rng.uniform(0.85, 0.95)),
                        assd_mm=1.0,
                        ensemble_disagreement=0.05,
                    ),
                    was_wrong=wrong,
                )
            )
    return reviews


def test_verifier_fitted_on_reviews_changes_scores_and_persists() -> None:
    reviews = _synthetic_reviews(5)
    probe_bad = dataclasses_replace(reviews[0].features, n_components=4)
    probe_good = reviews[1].features
    verifier = LabelVerifier()
    before = verifier.score(probe_bad).probability_wrong
    assert verifier.mode == "prior"
    assert verifier.fit(reviews) is True
    assert verifier.mode == "fitted on 10 reviews"
    after = verifier.score(probe_bad)
    assert after.probability_wrong != pytest.approx(before, abs=0.02)
    assert after.probability_wrong > verifier.score(probe_good).probability_wrong + 0.3
    assert after.reason_signals[0] == "component_count"
    assert after.reasons[0] == "4 connected components (usually 1)"

    restored = LabelVerifier.from_dict(json.loads(json.dumps(verifier.to_dict())))
    assert restored.mode == "fitted on 10 reviews"
    assert restored.score(probe_bad).probability_wrong == pytest.approx(after.probability_wrong)


def test_verifier_stays_in_prior_mode_with_too_few_reviews() -> None:
    reviews = [r for r in _synthetic_reviews(5) if not r.was_wrong] + [
        r for r in _synthetic_reviews(5) if r.was_wrong
    ][:2]
    verifier = LabelVerifier()
    probe, other = reviews[-1].features, reviews[0].features
    before = verifier.score(probe).probability_wrong
    order = verifier.score(probe).probability_wrong > verifier.score(other).probability_wrong
    assert verifier.fit([(r.features, r.was_wrong) for r in reviews]) is False
    assert verifier.mode == "prior"
    assert "2 wrong" in verifier.fit_message and "at least 3" in verifier.fit_message
    # too few to fit, but the prior's calibration moves toward the reviewed error rate
    assert "recalibrated on 7 reviews" in verifier.fit_message
    assert verifier.score(probe).probability_wrong != before
    assert (
        verifier.score(probe).probability_wrong > verifier.score(other).probability_wrong
    ) == order
    restored = LabelVerifier.from_dict(verifier.to_dict())
    assert restored.score(probe).probability_wrong == pytest.approx(
        verifier.score(probe).probability_wrong
    )


def dataclasses_replace(features: StructureFeatures, **changes) -> StructureFeatures:
    return StructureFeatures.from_dict({**features.to_dict(), **changes})


# --- expert -------------------------------------------------------------------------------


def test_expert_prefers_clean_candidate_and_says_why(population: ShapePopulation) -> None:
    candidates = {
        "current": shifted_spleen(),
        "model_a": CLEAN,  # equal to the first ensemble member: it must not vote for itself
        "previous": lesion_outside(),
    }
    choice = LabelExpert().choose(
        candidates, predictions=PREDICTIONS, population=population, spacing=SPACING
    )
    assert choice.best == "model_a" and choice.changed
    assert choice.wins == {"current": 1, "model_a": 2, "previous": 0}
    by_pair = {(c.a, c.b): c for c in choice.comparisons}
    assert len(by_pair) == 3
    vs_current = by_pair[("current", "model_a")]
    assert vs_current.winner == "model_a"
    assert vs_current.reason.startswith("spleen: current Dice to model ensemble")
    assert "judged against 1 of 2 model predictions" in vs_current.reason
    assert by_pair[("model_a", "previous")].reason.startswith("lesion: previous ")
    assert choice.badness["model_a"] < choice.badness["current"]


def test_expert_tie_keeps_current_label(population: ShapePopulation) -> None:
    choice = LabelExpert().choose(
        {"model_a": CLEAN.copy(), "current": CLEAN.copy()},
        predictions=PREDICTIONS,
        population=population,
        spacing=SPACING,
    )
    assert choice.best == "current" and not choice.changed
    (comparison,) = choice.comparisons
    assert comparison.winner == "current" and "kept the current label" in comparison.reason
    # both equal the first member, which therefore is not evidence
    assert "judged against 1 of 2 model predictions" in comparison.reason


# --- ROC ----------------------------------------------------------------------------------

SCORES = [0.9, 0.8, 0.7, 0.6, 0.3, 0.2]
BAD = [1, 1, 0, 1, 0, 0]


@pytest.mark.parametrize(
    ("target", "threshold", "sensitivity", "specificity", "n_flagged"),
    [
        # all 3 bad need 0.6: flags 0.9, 0.8, 0.7, 0.6 -> 1 false positive of 3 good
        (1.0, 0.6, 1.0, 2 / 3, 4),
        (0.95, 0.6, 1.0, 2 / 3, 4),  # 2/3 < 0.95, so still all 3
        # 2 of 3 bad (0.667 >= 0.66) are caught at 0.8: flags 0.9, 0.8, no good label
        (0.66, 0.8, 2 / 3, 1.0, 2),
        (0.3, 0.9, 1 / 3, 1.0, 1),
    ],
)
def test_choose_threshold_on_hand_made_scores(
    target: float, threshold: float, sensitivity: float, specificity: float, n_flagged: int
) -> None:
    point = choose_threshold(SCORES, BAD, target_sensitivity=target)
    assert point.threshold == threshold
    assert point.sensitivity == pytest.approx(sensitivity)
    assert point.specificity == pytest.approx(specificity)
    assert point.n_flagged == n_flagged and point.review_fraction == pytest.approx(n_flagged / 6)
    assert (point.n_bad, point.n) == (3, 6)


def test_choose_threshold_edge_cases() -> None:
    # ties are flagged together: the bad 0.5 drags both good 0.5 into review
    tied = choose_threshold([0.5, 0.5, 0.5, 0.1], [1, 0, 0, 0], target_sensitivity=1.0)
    assert (
        tied.threshold == 0.5 and tied.n_flagged == 3 and tied.specificity == pytest.approx(1 / 3)
    )
    none_bad = choose_threshold([0.4, 0.2], [0, 0])
    assert none_bad.threshold == math.inf and none_bad.n_flagged == 0
    assert math.isnan(none_bad.sensitivity) and none_bad.to_dict()["threshold"] is None
    all_bad = choose_threshold([0.4, 0.2], [1, 1], target_sensitivity=0.5)
    assert all_bad.threshold == 0.4 and math.isnan(all_bad.specificity)
    with pytest.raises(ValueError):
        choose_threshold([0.1], [1], target_sensitivity=0.0)
    with pytest.raises(ValueError):
        choose_threshold([], [])


def test_roc_curve_and_save(tmp_path) -> None:
    curve = roc_curve(SCORES, BAD)
    # pairs (bad, good) ranked correctly: 0.9 and 0.8 beat all 3 good, 0.6 beats 2 -> 8/9
    assert curve.auc == pytest.approx(8 / 9)
    assert curve.tpr[-1] == 1.0 and curve.fpr[-1] == 1.0
    point = choose_threshold(SCORES, BAD)
    json_path, png_path = tmp_path / "roc" / "roc.json", tmp_path / "roc" / "roc.png"
    save_roc(curve, point, json_path, png_path)
    data = json.loads(json_path.read_text())
    assert data["operating_point"]["threshold"] == 0.6
    assert data["curve"]["thresholds"][0] is None  # inf -> null
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert math.isnan(roc_curve([0.1, 0.2], [0, 0]).auc)


# --- budget -------------------------------------------------------------------------------


def test_review_budget_rounding() -> None:
    assert review_budget(0.05, 100) == 5
    assert review_budget(0.07, 100) == 7  # 0.07 * 100 = 7.000000000000001 in floats
    assert review_budget(0.05, 10) == 1  # rounded up: at least one review
    assert review_budget(0.05, 30) == 2
    assert review_budget(0.0, 100) == 0
    assert review_budget(0.05, 0) == 0


def test_select_for_review_enforces_budget() -> None:
    scores = {f"img{i:02d}": i / 40 for i in range(40)}  # img39 is the most doubtful
    picked = select_for_review(
        scores, already_reviewed={"img39", "img37"}, budget_fraction=0.05, n_labeled=40
    )
    assert picked == ["img38", "img36"]  # ceil(0.05 * 40) = 2, reviewed ones skipped
    assert select_for_review(scores, budget_fraction=0.05, n_labeled=40, used=1) == ["img39"]
    assert select_for_review(scores, budget_fraction=0.05, n_labeled=40, used=2) == []
    assert select_for_review(scores, budget_fraction=0.5, min_score=0.9) == [
        "img39",
        "img38",
        "img37",
        "img36",
    ]
    report = budget_report(len(picked), budget_fraction=0.05, n_labeled=40)
    assert (report.budget, report.used, report.remaining) == (2, 2, 0)
    assert report.fraction_used == 1.0 and report.review_fraction == 0.05


def test_expert_without_independent_evidence_judges_shape_and_keeps_first_on_tie(
    population: ShapePopulation,
) -> None:
    choice = LabelExpert().choose(
        {"model_a": PREDICTIONS[0], "model_b": PREDICTIONS[1]},
        predictions=PREDICTIONS,
        population=population,
        spacing=SPACING,
    )
    (comparison,) = choice.comparisons
    assert "no independent model prediction, judged on shape alone" in comparison.reason
    assert comparison.winner == "model_a" and "kept model_a, listed first" in comparison.reason
    assert choice.best == "model_a" and not choice.changed  # no "current": the first stands in


def test_verifier_keeps_the_prior_when_a_fit_ranks_the_reviews_worse(monkeypatch) -> None:
    reviews = _synthetic_reviews(5)
    verifier = LabelVerifier()
    x = np.asarray([[compute_signals(r.features, None)[0][s] for s in SIGNALS] for r in reviews])
    y = np.asarray([r.was_wrong for r in reviews], dtype=int)
    fit_auc, prior_auc = verifier._cross_validated_auc(x, y)
    assert prior_auc == pytest.approx(1.0)  # extra components: the prior ranks them all first
    assert 0.0 <= fit_auc <= 1.0
    monkeypatch.setattr(LabelVerifier, "_cross_validated_auc", lambda self, x, y: (0.4, 0.9))
    assert verifier.fit(reviews) is False
    assert verifier.mode == "prior" and "kept the prior weights" in verifier.fit_message
    assert verifier.intercept != verifier.prior_intercept  # still recalibrated on the reviews
