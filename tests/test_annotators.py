"""Many annotators per image: one label version per user, STAPLE / vote consensus, agreement
as a verifier signal, annotations on the critic's grid, the consensus as an expert candidate."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from emlabel.cli import main
from emlabel.labels.consensus import agreement, consensus_label, majority_vote, staple
from emlabel.methods.em import Action, EMItem, e_step
from emlabel.methods.em.critic import load_annotations
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.versions import datastore_items
from emlabel.settings import AppSettings
from emlabel.training.loading import load_items
from emlabel.verify import LabelVerifier, ShapePopulation, structure_features
from emlabel.verify.verifier import PRIOR_WEIGHTS, SIGNALS

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
SHAPE = (12, 12, 6)


def square(top: int, bottom: int, left: int, right: int, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def test_staple_of_three_masks_is_the_hand_computed_consensus():
    # every pixel has at least two of three annotators on the truth's side: the truth is the
    # vote, and STAPLE (each annotator's sensitivity/specificity estimated) agrees
    truth = square(16, 48, 16, 48)
    over = truth | square(8, 16, 16, 48)  # 8 extra rows above
    shifted = (truth | square(16, 48, 48, 54)) & ~square(16, 20, 16, 48)  # grows right, loses top
    masks = [truth, over, shifted]
    assert np.array_equal(staple(masks), truth.astype(bool))
    assert np.array_equal(majority_vote(masks, [1]), truth)
    fused = consensus_label(masks, {"x": 1})
    assert fused.method == "staple" and fused.n_annotators == 3
    assert np.array_equal(fused.label, truth)
    with pytest.raises(ValueError, match="at least 3"):
        staple(masks[:2])


def test_consensus_of_label_maps_staple_from_three_a_vote_below():
    truth = np.zeros((64, 64), np.uint8)
    truth[8:28, 8:28] = 1
    truth[36:56, 36:56] = 2
    a = truth.copy()
    a[28:32, 8:28] = 1  # liver too long
    b = truth.copy()
    b[36:40, 36:56] = 0  # spleen too short
    c = truth.copy()
    c[8:28, 8:12] = 2  # a strip of liver called spleen
    c[60:62, 60:62] = 9  # not a structure: background
    three = consensus_label([a, b, c], {"liver": 1, "spleen": 2})
    assert three.method == "staple" and np.array_equal(three.label, truth)
    two = consensus_label([a, c], {"liver": 1, "spleen": 2})
    assert two.method == "majority" and two.n_annotators == 2
    # two annotators: a pixel they disagree about is a tie and stays background
    expected = truth.copy()
    expected[8:28, 8:12] = 0  # liver (a) or spleen (c)
    assert np.array_equal(two.label, expected)
    assert consensus_label([a], {"liver": 1, "spleen": 2}).method == "majority"


def test_agreement_is_the_mean_pairwise_dice_per_structure():
    a = np.zeros((8, 8), np.uint8)
    a[0:2, 0:4] = 1  # liver: 8 pixels
    b = np.zeros((8, 8), np.uint8)
    b[0:2, 2:6] = 1  # 8 pixels, 4 shared with a: Dice 0.5
    b[6, 6] = 3  # kidney only in b
    c = a.copy()
    labels = {"liver": 1, "spleen": 2, "kidney": 3}
    values = agreement([a, b, c], labels)
    assert values["liver"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)  # (a,b) (a,c) (b,c)
    assert values["spleen"] == 1.0  # empty in all: every pair agrees
    assert values["kidney"] == pytest.approx(1 / 3)  # only (a,c), both empty, agree
    with pytest.raises(ValueError, match="at least 2"):
        agreement([a], labels)


def blob(shape: tuple[int, ...], center: tuple[int, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    d = sum((g - c) ** 2 for g, c in zip(grid, center, strict=True))
    return (d <= radius**2).astype(np.uint8)


def test_disagreement_is_a_verifier_signal_with_a_readable_reason():
    shape, labels = (24, 24, 24), {"liver": 1}
    truth = blob(shape, (12, 12, 12), 6)
    half = truth.copy()
    half[12:] = 0
    alone = structure_features(truth, spacing=(1, 1, 1), labels=labels, annotations=[truth])
    assert alone["liver"].n_annotators == 1 and alone["liver"].annotator_agreement is None
    agreeing = structure_features(truth, spacing=(1, 1, 1), labels=labels, annotations=[truth] * 2)
    assert agreeing["liver"].annotator_agreement == 1.0
    features = structure_features(
        truth, spacing=(1, 1, 1), labels=labels, annotations=[truth, half]
    )
    f = features["liver"]
    dice = 2 * half.sum() / (truth.sum() + half.sum())
    assert f.n_annotators == 2 and f.annotator_agreement == pytest.approx(dice)
    verifier = LabelVerifier()
    verdict = verifier.score(f)
    assert verdict.signals["annotator_disagreement"] == pytest.approx(0.9 - dice)
    assert verdict.contributions["annotator_disagreement"] == pytest.approx(12.0 * (0.9 - dice))
    assert verdict.reasons[0] == (
        f"annotators disagree: Dice {dice:.2f} to the other annotators' labels "
        "(2 annotators; expected about 0.90)"
    )
    logit = -3.0 + 12.0 * (0.9 - dice)  # the prior intercept, the only signal
    assert verdict.probability_wrong == pytest.approx(1 / (1 + np.exp(-logit)))
    assert verifier.score(agreeing["liver"]).reasons == []
    with pytest.raises(ValueError, match="annotation 1 has shape"):
        structure_features(truth, spacing=(1, 1, 1), labels=labels, annotations=[truth, truth[1:]])


def test_a_verifier_stored_before_the_signal_existed_scores_as_it_did():
    rng = np.random.default_rng(0)
    reviews = []
    for k in range(12):
        label = blob((16, 16, 16), (8, 8, 8), 4)
        if k % 2:
            label[rng.integers(0, 16), rng.integers(0, 16), :] = 1  # stray pieces
            label[rng.integers(0, 16), :, rng.integers(0, 16)] = 1
        (features,) = structure_features(label, spacing=(1, 1, 1), labels={"x": 1}).values()
        reviews.append((features, bool(k % 2)))
    verifier = LabelVerifier(min_reviews_per_class=2)
    assert verifier.fit(reviews), verifier.fit_message
    old = json.loads(json.dumps(verifier.to_dict()))  # as stored before the signal existed
    del old["weights"]["annotator_disagreement"]
    keep = [i for i, s in enumerate(old["fitted"]["signals"]) if s != "annotator_disagreement"]
    for key in ("signals", "mean", "scale", "coef"):
        old["fitted"][key] = [old["fitted"][key][i] for i in keep]
    restored = LabelVerifier.from_dict(old)
    assert restored.weights["annotator_disagreement"] == PRIOR_WEIGHTS["annotator_disagreement"]
    assert restored.fitted is not None and restored.fitted.signals == SIGNALS
    assert dict(zip(SIGNALS, restored.fitted.coef, strict=True))["annotator_disagreement"] == 0
    for features, _ in reviews:
        assert restored.score(features).probability_wrong == pytest.approx(
            verifier.score(features).probability_wrong
        )


def test_e_step_offers_the_annotators_consensus_to_the_expert():
    shape, labels = (24, 24, 24), {"liver": 1}
    truth = blob(shape, (12, 12, 12), 6)
    wrong = blob(shape, (4, 4, 4), 3)  # the latest annotator's label, the current one
    annotations = [truth, np.roll(truth, 1, axis=0), wrong]
    population = ShapePopulation.fit(
        [structure_features(blob(shape, (12, 12, 12), r), spacing=(1, 1, 1), labels=labels)["liver"]
         for r in (5, 6, 7)]
    )  # fmt: skip
    verifier = LabelVerifier()
    features = structure_features(wrong, spacing=(1, 1, 1), labels=labels, annotations=annotations)
    verdict = verifier.score_image(features, population, image_id="img")
    assert "annotators disagree" in verdict.reasons[0]
    result = e_step(
        labels={"img": wrong},
        members={"img": []},  # no model yet: the annotators are the only other opinion
        verdicts={"img": verdict},
        verifier=verifier,
        population=population,
        label_map=labels,
        spacing=(1, 1, 1),
        correct_threshold=min(0.5, verdict.probability_wrong),
        review_threshold=0.1,
        annotations={"img": annotations},
    )
    (decision,) = result.decisions
    assert decision.action == Action.CORRECT and decision.candidate == "consensus"
    expected = consensus_label(annotations, labels)
    assert expected.method == "staple"
    assert np.array_equal(result.corrections["img"], expected.label)


@pytest.fixture
def studies(tmp_path: Path) -> Path:
    """A studies folder with one blank image ``img0`` (default settings: demo labels)."""
    folder = tmp_path / "studies"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), AFFINE), folder / "img0.nii.gz")
    return folder


def label_file(folder: Path, value: int) -> Path:
    """``folder/img0.nii.gz``: a liver of ``value`` voxels-wide (tells the files apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    array = np.zeros(SHAPE, np.uint8)
    array[:value, :4, :2] = 1
    nib.save(nib.Nifti1Image(array, AFFINE), folder / "img0.nii.gz")
    return folder / "img0.nii.gz"


def liver_rows(path: str) -> int:
    return int(np.asarray(nib.load(path).dataobj).any(axis=(1, 2)).sum())


def test_import_labels_per_user_keeps_one_version_per_user(studies, tmp_path, capsys):
    def run(user: str, rows: int) -> None:
        path = label_file(tmp_path / f"{user}{rows}", rows)
        assert main(["import-labels", "--studies", str(studies), "--user", user, str(path)]) == 0

    run("alice", 2)
    run("bob", 3)
    assert "user 'bob'" in capsys.readouterr().out
    datastore = VersionedDatastore(str(studies), settings=AppSettings())
    latest = datastore.annotator_labels("img0")
    assert list(latest) == ["alice", "bob"]
    assert [liver_rows(datastore.get_label_uri("img0", v.tag)) for v in latest.values()] == [2, 3]
    (item,) = datastore_items(datastore)
    assert [liver_rows(p) for p in item.annotations] == [2, 3]
    assert item.tag == "noisy" and liver_rows(item.label) == 3  # bob's, the newest, is the best

    run("alice", 5)  # alice again: a new version of her label, the older one kept
    datastore = VersionedDatastore(str(studies), settings=AppSettings())
    latest = datastore.annotator_labels("img0")
    assert {u: v.version for u, v in latest.items()} == {"alice": 3, "bob": 2}
    assert liver_rows(datastore.get_label_uri("img0", latest["alice"].tag)) == 5
    users = [(v.version, v.provenance.user) for v in datastore.versions("img0")]
    assert users == [(1, "alice"), (2, "bob"), (3, "alice")]

    capsys.readouterr()
    assert main(["versions", "--studies", str(studies), "--json", "img0"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["user"], r["annotator"]) for r in rows] == [
        (1, "alice", False), (2, "bob", True), (3, "alice", True)
    ]  # fmt: skip

    datastore.remove_label("img0", "noisy")  # alice's latest deleted: she has none now
    assert list(datastore.annotator_labels("img0")) == ["bob"]
    (item,) = datastore_items(datastore)
    assert item.annotations == ()  # one annotator is not a disagreement


TINY = AppSettings(target_spacing=(1.0, 1.0, 1.0), roi_size=(16, 16, 16))


def write_case(folder: Path, name: str, shape: tuple[int, ...]) -> tuple[str, str]:
    """An image and its label (a box) on a 1 mm grid."""
    folder.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"{name}.nii.gz")
    return str(folder / f"{name}.nii.gz"), write_box(folder, name, shape, 0)


def write_box(folder: Path, name: str, shape: tuple[int, ...], shift: int) -> str:
    """A label of image ``name``: a box moved by ``shift`` voxels along the first axis."""
    label = np.zeros(shape, np.uint8)
    label[2 + shift : 8 + shift, 2:8, 1:4] = 1
    path = folder / f"{name}.box{shift}.nii.gz"
    nib.save(nib.Nifti1Image(label, np.eye(4)), path)
    return str(path)


SHAPES = {"big": (20, 18, 8), "small": (12, 12, 5)}


@pytest.mark.parametrize("annotated", ["big", "small"])
def test_annotations_land_on_the_critic_grid(tmp_path, annotated):
    # "big" alone sets the padded shape; annotating only "small" needs every item reloaded
    items = []
    for name, shape in SHAPES.items():
        image, label = write_case(tmp_path, name, shape)
        annotations = (label, write_box(tmp_path, name, shape, 3)) if name == annotated else ()
        items.append(EMItem(id=name, image=image, label=label, annotations=annotations))
    data = load_items([i.as_dict() for i in items], settings=TINY, multiple_of=8)
    found = load_annotations(items, data, settings=TINY, multiple_of=8)
    assert list(found) == [annotated]
    first, second = found[annotated]
    on_grid = data.labels[data.ids.index(annotated)].numpy()
    assert first.shape == on_grid.shape and np.array_equal(first, on_grid)
    assert first.sum() > 0 and np.array_equal(np.roll(first, 3, axis=0), second)
    assert load_annotations(items[:0], data, settings=TINY, multiple_of=8) == {}
