"""The 2D demo (``kind="xray"``): PNG files per role, truth with every structure, noisy labels
that differ, byte-identical reruns, manifest and nnU-Net style dataset.json (both kinds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emlabel.cli import main
from emlabel.data.demo import DemoOptions, write_demo_studies
from emlabel.data.phantoms import PHANTOM_LABELS, PhantomOptions
from emlabel.data.xray import XRAY_LABELS, XRayOptions, corrupt_xray_label, make_xray
from emlabel.metrics import dice

SHAPE = (64, 64)
OPTIONS = DemoOptions(
    kind="xray", n=5, seed=5, n_final=1, n_unlabeled=1, xray=XRayOptions(shape=SHAPE)
)
ROLES = {
    "case_000": "final",
    "case_001": "noisy",
    "case_002": "noisy",
    "case_003": "noisy",
    "case_004": "unlabeled",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("xray") / "studies"
    return out, write_demo_studies(out, OPTIONS)


def load(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        assert picture.mode == "L", path
        return np.asarray(picture)


def test_files_per_role_are_grey_pngs(demo):
    out, _ = demo
    for cid, role in ROLES.items():
        name = f"{cid}.png"
        image = load(out / name)
        assert image.shape == SHAPE and image.dtype == np.uint8
        assert image.std() > 10  # a picture, not a blank
        truth = load(out / "emlabel_demo" / "truth" / name)
        assert truth.shape == SHAPE
        assert set(np.unique(truth).tolist()) == {0, 1, 2, 3}  # all three structures
        assert (out / "labels" / "final" / name).is_file() == (role == "final")
        assert (out / "emlabel_demo" / "noisy" / name).is_file() == (role == "noisy")
        if role == "final":
            np.testing.assert_array_equal(load(out / "labels" / "final" / name), truth)
    assert sorted(p.name for p in out.glob("*.png")) == [f"{cid}.png" for cid in ROLES]
    assert not list(out.rglob("*.nii.gz"))


def test_noisy_labels_differ_from_truth(demo):
    out, manifest = demo
    for cid, case in manifest["cases"].items():
        if case["role"] != "noisy":
            continue
        noisy, truth = load(out / case["noisy"]), load(out / case["truth"])
        assert set(np.unique(noisy).tolist()) <= {0, 1, 2, 3}, cid
        scores = {name: dice(noisy == v, truth == v) for v, name in enumerate(XRAY_LABELS) if v}
        assert min(scores.values()) < 1.0, cid
        assert case["dice_noisy_vs_truth"] == pytest.approx(scores, abs=1e-9)
        assert 1 <= len(case["corruptions"]) <= 3
        assert {r["structure"] for r in case["corruptions"]} <= set(XRAY_LABELS[1:])


def test_manifest_and_dataset_json(demo):
    out, manifest = demo
    assert json.loads((out / "emlabel_demo" / "manifest.json").read_text()) == manifest
    assert manifest["kind"] == "xray" and manifest["seed"] == 5 and manifest["n"] == 5
    assert manifest["labels"] == {"background": 0, "lung_left": 1, "lung_right": 2, "heart": 3}
    assert manifest["shape"] == list(SHAPE) and manifest["spacing"] == [1.0, 1.0]
    assert {cid: case["role"] for cid, case in manifest["cases"].items()} == ROLES
    for case in manifest["cases"].values():
        truth = load(out / case["truth"])
        counts = {name: int((truth == v).sum()) for v, name in enumerate(XRAY_LABELS) if v}
        assert case["voxel_counts"] == counts
    assert json.loads((out / "dataset.json").read_text()) == {
        "channel_names": {"0": "XR"},
        "labels": {"background": 0, "lung_left": 1, "lung_right": 2, "heart": 3},
        "numTraining": 1,
        "file_ending": ".png",
    }


def test_same_seed_gives_byte_identical_files(demo, tmp_path):
    out, manifest = demo
    assert write_demo_studies(tmp_path / "again", OPTIONS) == manifest
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file()
    )
    for rel in files:
        assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    other = make_xray(seed=1, options=OPTIONS.xray).image
    assert not np.array_equal(other, make_xray(seed=2, options=OPTIONS.xray).image)


def test_corruptions_work_on_2d_labels():
    label = make_xray(seed=0, options=XRayOptions(shape=SHAPE)).label
    for seed in range(8):
        noisy, records = corrupt_xray_label(label, rng=np.random.default_rng(seed), n_errors=3)
        assert len(records) == 3 and noisy.shape == SHAPE
        assert set(np.unique(noisy).tolist()) <= {0, 1, 2, 3}
        assert not np.array_equal(noisy, label)


def test_phantom_demo_writes_dataset_json_and_a_kind_switch_removes_stale_files(tmp_path):
    phantom = DemoOptions(n=2, n_final=1, n_unlabeled=0, phantom=PhantomOptions(shape=(16, 16, 12)))
    manifest = write_demo_studies(tmp_path, phantom)
    assert manifest["kind"] == "phantom"
    assert json.loads((tmp_path / "dataset.json").read_text()) == {
        "channel_names": {"0": "CT"},
        "labels": {name: value for value, name in enumerate(PHANTOM_LABELS)},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    xray = DemoOptions(kind="xray", n=2, n_final=1, n_unlabeled=0, xray=XRayOptions(shape=SHAPE))
    write_demo_studies(tmp_path, xray)
    assert not list(tmp_path.rglob("*.nii.gz"))
    assert json.loads((tmp_path / "dataset.json").read_text())["channel_names"] == {"0": "XR"}


def test_bad_kind_is_refused():
    with pytest.raises(ValueError, match=r"^kind "):
        DemoOptions(kind="mri")


def test_cli_demo_kind_xray(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "s"), "--kind", "xray", "--n", "4"]) == 0
    assert "4 images" in capsys.readouterr().out
    assert (
        json.loads((tmp_path / "s" / "emlabel_demo" / "manifest.json").read_text())["kind"]
        == "xray"
    )
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "t"), "--kind", "mri"])
