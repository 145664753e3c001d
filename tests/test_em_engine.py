"""The EM engine as library code: skeleton, E-step, learners, loop (no server, no datastore)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from emlabel.errors import InvalidRequestError
from emlabel.learners import LEARNERS, SegmentationLearner, make_learner
from emlabel.learners.cgs import specialists_label
from emlabel.methods.em import Action, EMItem, EMLoop, EMOptions, e_step
from emlabel.settings import AppSettings
from emlabel.training.skeleton import EpochTrainer
from emlabel.verify import LabelVerifier, ShapePopulation, structure_features

TINY = AppSettings(
    roi_size=(32, 32, 32),
    target_spacing=(2.0, 2.0, 3.0),
    network_channels=(8, 16, 32),
    num_res_units=0,
    max_epochs=1,
    train_batch_size=2,
)


class CountingTrainer(EpochTrainer[dict]):
    max_epochs = 3

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def train_epoch(self, epoch0: int) -> dict:
        self.seen.append(f"train {epoch0}")
        return {"epoch": epoch0}

    def after_epoch(self, epoch0: int, stats: dict) -> dict:
        self.seen.append(f"after {epoch0}")
        return stats | {"checked": True}

    def state_dict(self) -> dict:
        return {}


def test_skeleton_runs_hooks_in_order_and_resumes():
    trainer = CountingTrainer()
    reported = []
    trainer.fit(2, on_epoch=reported.append)
    assert trainer.seen == ["train 0", "after 0", "train 1", "after 1"]
    trainer.fit()  # resumes: only the third epoch
    assert trainer.seen[-2:] == ["train 2", "after 2"]
    assert [h["epoch"] for h in trainer.history] == [0, 1, 2]
    assert all(h["checked"] for h in trainer.history) and len(reported) == 2


def blob(shape, center, radius) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    d = (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2
    return (d <= radius**2).astype(np.uint8)


def test_e_step_corrects_a_wrong_label_with_the_ensemble_majority_and_accepts_a_good_one():
    shape, labels = (24, 24, 24), {"liver": 1}
    truth = blob(shape, (12, 12, 12), 6)
    members = [truth, truth, np.roll(truth, 1, axis=0)]
    population = ShapePopulation.fit(
        [structure_features(blob(shape, (12, 12, 12), r), members, spacing=(1, 1, 1), labels=labels)["liver"]
         for r in (5, 6, 7)]
    )  # fmt: skip
    verifier = LabelVerifier()
    current = {"good": truth, "wrong": blob(shape, (4, 4, 4), 3)}
    verdicts = {
        i: verifier.score_image(
            list(structure_features(lab, members, spacing=(1, 1, 1), labels=labels).values()),
            population,
            image_id=i,
        )
        for i, lab in current.items()
    }
    assert verdicts["wrong"].probability_wrong > verdicts["good"].probability_wrong
    result = e_step(
        labels=current,
        members={i: members for i in current},
        verdicts=verdicts,
        verifier=verifier,
        population=population,
        label_map=labels,
        spacing=(1, 1, 1),
        correct_threshold=min(0.8, verdicts["wrong"].probability_wrong),
        review_threshold=min(0.5, verdicts["wrong"].probability_wrong),
    )
    actions = {d.image_id: d.action for d in result.decisions}
    assert actions["good"] == Action.ACCEPT
    assert actions["wrong"] == Action.CORRECT
    majority = (np.stack(members).sum(axis=0) >= 2).astype(np.uint8)
    assert np.array_equal(result.corrections["wrong"], majority)
    assert "good" not in result.corrections


def test_learner_registry_lists_valid_names():
    assert set(LEARNERS) == {"segmentation", "aide", "cgs"}
    with pytest.raises(InvalidRequestError, match="valid: aide, cgs, segmentation"):
        make_learner("nnunet", settings=TINY)


def test_cgs_specialists_label_takes_the_single_head_that_says_mine():
    k = 2
    out = torch.zeros(k + 1 + 3 * k, 2, 2)
    out[k + 1 + 1, 0, 0] = 5  # specialist 1 (structure 1) says "mine" at (0, 0)
    out[k + 4 + 1, 0, 1] = 5  # specialist 2 says "mine" at (0, 1)
    out[k + 1 + 1, 1, 1] = 5
    out[k + 4 + 1, 1, 1] = 5  # both say "mine": no single owner -> background
    label = specialists_label(out, k)
    assert label.tolist() == [[1, 2], [0, 0]]


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def demo_items(studies: Path) -> list[EMItem]:
    """The demo's images with their final, else noisy, else no label."""
    import json

    manifest = json.loads((studies / "emlabel_demo" / "manifest.json").read_text())
    items = []
    for image_id in sorted(manifest["cases"]):
        final = studies / "labels" / "final" / f"{image_id}.nii.gz"
        noisy = studies / "labels" / "noisy" / f"{image_id}.nii.gz"
        label = final if final.exists() else noisy if noisy.exists() else None
        items.append(
            EMItem(
                id=image_id,
                image=str(studies / f"{image_id}.nii.gz"),
                label=str(label) if label else None,
                human=label == final,
                tag="final" if label == final else "noisy" if label else None,
            )
        )
    return items


def test_em_loop_on_demo_files_writes_new_files_only(tiny_demo_template, tmp_path):
    items = demo_items(tiny_demo_template)
    before = {i.label: sha(i.label) for i in items if i.label}
    loop = EMLoop(
        learner=SegmentationLearner(settings=TINY),
        settings=TINY,
        options=dataclasses.replace(
            EMOptions(),
            epochs=1,
            correct_threshold=0.01,
            review_threshold=0.01,
            doubtful_pseudo_labels=True,  # every label is doubtful here: train on them anyway
        ),
        reviews=[],
        review_threshold=0.01,
        workdir=tmp_path,
    )
    result = loop.run(items)
    (row,) = result.iterations
    unlabeled = {i.id for i in items if not i.label}
    # the pseudo-labels of the unlabeled images are judged like the other machine labels
    assert row["verified"] == sum(1 for i in items if not i.human) and unlabeled
    assert row["accepted"] + row["corrected"] + row["queued"] == row["verified"]
    assert row["m_step"]["pseudo_labels"] + row["corrected"] >= len(unlabeled)
    assert row["remaining_errors"]["meaningful"] is False  # no random review yet
    replaced = {c.parent for c in result.corrections}
    kept = {p.image_id for p in result.pseudo_labels}
    assert kept == unlabeled and all(Path(p.path).parent == tmp_path for p in result.pseudo_labels)
    assert all(p.tag in replaced for p in result.pseudo_labels if p.image_id in
               {c.image_id for c in result.corrections})  # fmt: skip
    for correction in result.corrections:
        assert Path(correction.path).parent == tmp_path
        image = nib.load(next(i.image for i in items if i.id == correction.image_id))
        written = nib.load(correction.path)
        assert written.shape == image.shape and np.allclose(written.affine, image.affine)
    assert {p: sha(p) for p in before} == before  # the items' files are never touched
    assert loop.learner.trained and loop.learner.state_dict()


def test_two_members_are_two_candidates_not_their_agreement():
    from emlabel.methods.em import model_candidates

    a = np.array([[1, 1, 0, 2]], np.uint8)
    b = np.array([[0, 1, 2, 1]], np.uint8)
    two = model_candidates([a, b])
    assert set(two) == {"model_1", "model_2"}
    assert np.array_equal(two["model_1"], a) and np.array_equal(two["model_2"], b)
    three = model_candidates([a, b, b])
    assert set(three) == {"model"} and np.array_equal(three["model"], b)


def test_doubtful_pseudo_labels_can_be_left_out_of_the_m_step(tiny_demo_template, tmp_path):
    items = demo_items(tiny_demo_template)
    unlabeled = {i.id for i in items if not i.label}
    loop = EMLoop(
        learner=SegmentationLearner(settings=TINY),
        settings=TINY,
        options=dataclasses.replace(
            EMOptions(),
            epochs=1,
            correct_threshold=1.0,
            review_threshold=1e-6,
            doubtful_pseudo_labels=False,
        ),  # every label is doubtful, none is corrected
        reviews=[],
        review_threshold=1e-6,
        workdir=tmp_path,
    )
    (row,) = loop.run(items).iterations
    assert row["queued"] == row["verified"] and row["corrected"] == 0
    assert row["m_step"]["left_out_doubtful"] == len(unlabeled) > 0
    assert row["m_step"]["pseudo_labels"] == 0  # the guesses were not trained on
    labeled = sum(1 for i in items if i.label)
    assert row["m_step"]["train_images"] < labeled + len(unlabeled)
