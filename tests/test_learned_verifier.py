"""The learned verifier: ranks corrupted labels above their clean twins, its pair head
prefers the clean one, it needs no segmentation model, and the app's choice rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from emlabel.verify import LabelExpert
from emlabel.verify.learned import (
    LearnedVerifier,
    LearnedVerifierOptions,
    TrustedLabel,
    train_learned_verifier,
)
from emlabel.verify.learned.corrupt import CORRUPTIONS, equivalent_radius
from emlabel.verify.learned.inputs import crop_box, network_input
from emlabel.verify.learned.selection import choose_verifier

LABELS = {"disk": 1}


def disk_case(rng: np.random.Generator, size: int = 64) -> TrustedLabel:
    """A bright ellipse in noise, labelled exactly."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.35 * size, 0.65 * size, 2)
    ry, rx = rng.uniform(0.12 * size, 0.22 * size, 2)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    image = mask * 1.0 + rng.normal(0, 0.3, mask.shape)
    return TrustedLabel(image=image[None].astype(np.float32), label=mask.astype(np.uint8))


@pytest.fixture(scope="module")
def trained() -> tuple[LearnedVerifier, list[TrustedLabel]]:
    rng = np.random.default_rng(0)
    trusted = [disk_case(rng) for _ in range(6)]
    options = LearnedVerifierOptions(steps=120, batch_size=8, seed=0)
    verifier = train_learned_verifier(trusted, label_map=LABELS, options=options)
    held_out = [disk_case(np.random.default_rng(100 + k)) for k in range(6)]
    return verifier, held_out


def corrupted(label: np.ndarray) -> np.ndarray:
    """Dilated by a third of the radius: Dice well below 0.9."""
    k = max(2, round(equivalent_radius(label == 1) / 3))
    return ndimage.binary_dilation(label == 1, iterations=k).astype(np.uint8)


def test_a_corrupted_label_scores_above_its_clean_twin(trained):
    verifier, held_out = trained
    wins = [
        verifier.score(t.image, corrupted(t.label))["disk"]
        > verifier.score(t.image, t.label)["disk"]
        for t in held_out
    ]
    assert sum(wins) >= 5, wins  # images it never saw
    assert verifier.validation["held_out_images"] == 1  # 6 trusted: one held out
    assert 0.0 <= verifier.validation["auroc"] <= 1.0


def test_the_pair_head_prefers_the_clean_label_and_is_antisymmetric(trained):
    verifier, held_out = trained
    prefs = [verifier.prefer(t.image, t.label, corrupted(t.label))["disk"] for t in held_out]
    assert sum(p > 0.5 for p in prefs) >= 5, prefs
    t = held_out[0]
    ab = verifier.prefer(t.image, t.label, corrupted(t.label))["disk"]
    ba = verifier.prefer(t.image, corrupted(t.label), t.label)["disk"]
    assert ab + ba == pytest.approx(1.0)
    assert verifier.prefer(t.image, t.label, t.label)["disk"] == 0.5  # identical: no preference


def test_a_round_trip_keeps_scores_and_a_foreign_file_is_a_checkpoint_error(trained, tmp_path):
    import torch

    from emlabel.checkpoints import CheckpointError

    verifier, held_out = trained
    t = held_out[1]
    assert verifier.with_model is False  # trained without model maps (scored without them)
    verifier.save(tmp_path / "verifier.pt")
    loaded = LearnedVerifier.load(tmp_path / "verifier.pt")
    assert loaded.score(t.image, t.label) == pytest.approx(verifier.score(t.image, t.label))
    assert loaded.validation["auroc"] == pytest.approx(verifier.validation["auroc"])
    assert loaded.with_model is False and loaded.grid == (64, 64)
    torch.save({"model": {}, "emlabel": {"kind": "something else"}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a learned verifier"):
        LearnedVerifier.load(tmp_path / "other.pt")
    meta = verifier.meta() | {"options": {"no_such_option": 1}}
    torch.save({"model": verifier.state_dict(), "emlabel": meta}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="train 'verifier' again"):
        LearnedVerifier.load(tmp_path / "old.pt")


def test_the_app_ignores_a_stored_verifier_for_other_structures(trained, tmp_path):
    from emlabel.methods.em.verifier_training import VERIFIER_MODEL_FILE, load_learned
    from emlabel.settings import AppSettings

    verifier, _ = trained
    verifier.save(tmp_path / VERIFIER_MODEL_FILE)
    fits = AppSettings(labels=("disk",), spatial_dims=2)
    assert load_learned(tmp_path, fits) is not None
    assert load_learned(tmp_path, AppSettings(labels=("disk", "ring"), spatial_dims=2)) is None
    assert load_learned(tmp_path, AppSettings(labels=("disk",), spatial_dims=3)) is None


def test_the_expert_uses_the_pairwise_judge(trained):
    verifier, held_out = trained
    t = held_out[2]
    bad = corrupted(t.label)
    expert = LabelExpert(labels=LABELS, containment={})
    choice = expert.choose(
        {"current": bad, "model": t.label},
        spacing=(1.0, 1.0),
        judge=lambda a, b, maps: verifier.prefer(t.image, a, b, model_maps=maps),
    )
    assert choice.best == "model" and "pairwise judge prefers model" in choice.comparisons[0].reason


def test_3d_data_goes_through_the_same_code():
    rng = np.random.default_rng(1)
    zz, yy, xx = np.mgrid[:24, :24, :24]
    trusted = []
    for _ in range(2):
        c = rng.uniform(9, 15, 3)
        mask = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= 36
        image = (mask + rng.normal(0, 0.3, mask.shape))[None].astype(np.float32)
        trusted.append(TrustedLabel(image=image, label=mask.astype(np.uint8)))
    options = LearnedVerifierOptions(steps=3, batch_size=4, grid=(16, 16, 16), channels=(8, 16))
    verifier = train_learned_verifier(trusted, label_map=LABELS, options=options)
    assert verifier.spatial_dims == 3 and verifier.validation["held_out_images"] == 0
    assert verifier.validation["n_labels"] > 0  # validated on fresh corruptions
    assert set(verifier.score(trusted[0].image, trusted[0].label)) == {"disk"}


def test_corruptions_change_the_mask_and_inputs_have_the_documented_channels():
    rng = np.random.default_rng(3)
    t = disk_case(rng)
    mask = t.label == 1
    for kind, corrupt in CORRUPTIONS.items():
        out = corrupt(mask, rng)
        assert out.shape == mask.shape and out.dtype == bool
        assert not np.array_equal(out, mask), kind
    x = network_input(t.image, [mask], None, grid=(32, 32))
    assert x.shape == (4, 32, 32) and not x[2:].any()  # image, mask, model map, has_model
    assert crop_box([np.zeros_like(mask)], mask.shape) == (slice(0, 64), slice(0, 64))


def test_bad_options_name_the_field_and_a_bad_request_is_a_400(tmp_path):
    from emlabel.errors import InvalidRequestError
    from emlabel.monailabel.verifier import VerifierTrainTask
    from emlabel.settings import AppSettings

    with pytest.raises(ValueError, match="steps"):
        LearnedVerifierOptions(steps=0).validate()
    with pytest.raises(ValueError, match="grid"):
        LearnedVerifierOptions(grid=(30, 30)).validate()  # not a multiple of 2^4
    with pytest.raises(ValueError, match="grid"):
        LearnedVerifierOptions(grid=(16, 16)).validate()  # one voxel at the last stage
    task = VerifierTrainTask(
        model_path=str(tmp_path / "verifier.pt"), settings=AppSettings(), description="test"
    )
    for bad in ({"seed": -1}, {"steps": 0}, {"bad_dice": 1.5}, {"grid": "8,8"}):
        with pytest.raises(InvalidRequestError):
            task.parse_request(bad)
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="at least one structure"):
        train_learned_verifier([disk_case(rng)], label_map={})
    # a validation share that would leave nothing to train on keeps one image for training
    few = LearnedVerifierOptions(steps=1, batch_size=4, validation_fraction=0.95)
    tiny = train_learned_verifier([disk_case(rng) for _ in range(5)], label_map=LABELS, options=few)
    assert tiny.validation["held_out_images"] == 4


def test_the_choice_rule():
    assert choose_verifier(learned_available=False).name == "hand_built"
    validation = {"hand_built": [0.1, 0.35, 0.9, 0.3], "learned": [0.1, 0.2, 0.9, 0.95]}
    wrong = [False, False, True, True]
    choice = choose_verifier(validation=validation, validation_wrong=wrong, learned_available=True)
    assert choice.name == "hand_built" and choice.basis == "default"  # synthetic: reported only
    assert choice.auroc["learned"] == 1.0 and "0 wrong, 0 right" in choice.reason
    # enough reviews scored by both decide, whatever the validation said
    reviews = [({"hand_built": 0.9, "learned": 0.1}, True)] * 3 + [
        ({"hand_built": 0.1, "learned": 0.9}, False)
    ] * 3
    choice = choose_verifier(
        reviews=reviews, validation=validation, validation_wrong=wrong, learned_available=True
    )
    assert (
        choice.name == "hand_built" and choice.basis == "reviews" and "6 reviewed" in choice.reason
    )
    better = [({"hand_built": 0.1, "learned": 0.9}, True)] * 3 + [
        ({"hand_built": 0.9, "learned": 0.1}, False)
    ] * 3
    assert choose_verifier(reviews=better, learned_available=True).name == "learned"
    tie = [({"hand_built": 0.9, "learned": 0.9}, True)] * 3 + [
        ({"hand_built": 0.1, "learned": 0.1}, False)
    ] * 3
    assert choose_verifier(reviews=tie, learned_available=True).name == "hand_built"


def test_the_em_trainer_retrains_only_a_stale_verifier():
    from emlabel.methods.em import EMItem
    from emlabel.methods.em.verifier_training import is_stale

    trained_on = {"trained_on": ["i0:final", "i1:final", "i2:final"]}
    verifier = LearnedVerifier(
        label_map=LABELS, image_channels=1, grid=(64, 64), options=LearnedVerifierOptions(),
        validation=trained_on, with_model=True,
    )  # fmt: skip
    items = [EMItem(id=f"i{k}", image=f"i{k}.png", label="l.png", human=True, tag="final")
             for k in range(3)]  # fmt: skip
    assert not is_stale(None, items, model_available=True)  # the first: on request only
    assert not is_stale(verifier, items, model_available=True)  # the finals it learned from
    newer = [EMItem(id=f"n{k}", image="n.png", label="l.png", human=True, tag="final")
             for k in range(3)]  # fmt: skip
    assert is_stale(verifier, items + newer, model_available=True)
    assert not is_stale(verifier, items + newer[:2], model_available=True)
    verifier.with_model = False  # trained before any model: stale once one exists
    assert is_stale(verifier, items, model_available=True)
    assert not is_stale(verifier, items, model_available=False)
