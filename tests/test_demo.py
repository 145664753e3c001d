"""Tests for the demo studies writer: layout per role, files read back with nibabel,
manifest contents recomputed from the files, determinism, refusals and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from emlabel.data.demo import DemoOptions, write_demo_studies
from emlabel.data.phantoms import PHANTOM_LABELS, PhantomOptions

SHAPE = (32, 32, 24)
SPACING = (1.6, 1.6, 2.5)
OPTIONS = DemoOptions(n=6, seed=3, n_final=2, n_unlabeled=1, phantom=PhantomOptions(shape=SHAPE))
ROLES = {
    "case_000": "final",
    "case_001": "final",
    "case_002": "noisy",
    "case_003": "noisy",
    "case_004": "noisy",
    "case_005": "unlabeled",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "studies"
    return out, write_demo_studies(out, OPTIONS)


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / float(total)


def test_files_per_role(demo):
    out, _ = demo
    for cid, role in ROLES.items():
        name = f"{cid}.nii.gz"
        assert (out / name).is_file()
        assert (out / "emlabel_demo" / "truth" / name).is_file()
        assert (out / "labels" / "final" / name).is_file() == (role == "final")
        assert (out / "emlabel_demo" / "noisy" / name).is_file() == (role == "noisy")
    images = sorted(p.name for p in out.glob("*.nii.gz"))
    assert images == [f"{cid}.nii.gz" for cid in ROLES]
    leftovers = [p for p in out.rglob("*") if "tmp" in p.name or p.name.startswith(".")]
    assert leftovers == []


def test_images_and_labels_read_back(demo):
    out, _ = demo
    expected_affine = np.diag([*SPACING, 1.0])
    for path in [*out.glob("*.nii.gz"), *out.glob("labels/final/*"), *out.glob("emlabel_demo/*/*")]:
        if path.suffix == ".json":
            continue
        img = nib.load(path)
        assert img.shape == SHAPE, path
        np.testing.assert_allclose(img.header.get_zooms(), SPACING, rtol=1e-6)
        np.testing.assert_allclose(img.affine, expected_affine, atol=1e-6)
        assert int(img.header["qform_code"]) > 0 and int(img.header["sform_code"]) > 0
        is_image = path.parent == out
        assert img.get_data_dtype() == (np.int16 if is_image else np.uint8), path
        data = load(path)
        if is_image:
            assert data.min() >= -1024 and data.max() <= 3071
            assert np.median(data[:2, :2, :]) < -900  # air in the corners
        else:
            assert set(np.unique(data).tolist()) <= set(range(len(PHANTOM_LABELS)))


def test_final_labels_are_the_truth(demo):
    out, _ = demo
    for cid in ("case_000", "case_001"):
        final = load(out / "labels" / "final" / f"{cid}.nii.gz")
        truth = load(out / "emlabel_demo" / "truth" / f"{cid}.nii.gz")
        np.testing.assert_array_equal(final, truth)
        assert set(np.unique(truth).tolist()) == set(range(7))


def test_manifest_matches_the_files(demo):
    out, manifest = demo
    assert json.loads((out / "emlabel_demo" / "manifest.json").read_text()) == manifest
    assert manifest["seed"] == 3 and manifest["n"] == 6
    assert manifest["labels"] == {name: i for i, name in enumerate(PHANTOM_LABELS)}
    assert manifest["labels"]["lesion"] == 6
    np.testing.assert_allclose(manifest["spacing"], SPACING)
    assert list(manifest["shape"]) == list(SHAPE)
    assert {cid: case["role"] for cid, case in manifest["cases"].items()} == ROLES
    for cid, case in manifest["cases"].items():
        truth = load(out / case["truth"])
        counts = {name: int((truth == i).sum()) for i, name in enumerate(PHANTOM_LABELS) if i}
        assert case["voxel_counts"] == counts
        if case["role"] == "noisy":
            assert case["noisy"] == f"emlabel_demo/noisy/{cid}.nii.gz"
            assert 1 <= len(case["corruptions"]) <= 3
        else:
            assert case["noisy"] is None and case["corruptions"] == []


def test_noisy_labels_differ_and_dice_is_recomputable(demo):
    out, manifest = demo
    for case in manifest["cases"].values():
        if case["role"] != "noisy":
            continue
        noisy, truth = load(out / case["noisy"]), load(out / case["truth"])
        assert not np.array_equal(noisy, truth)
        scores = case["dice_noisy_vs_truth"]
        assert min(scores.values()) < 1.0
        for i, name in enumerate(PHANTOM_LABELS[1:], start=1):
            assert scores[name] == pytest.approx(dice(noisy == i, truth == i), abs=1e-9)
        corrupted = {r["structure"] for r in case["corruptions"]}
        assert any(scores[name] < 1.0 for name in corrupted)


def test_same_seed_same_demo_other_seed_differs(demo, tmp_path):
    out, manifest = demo
    again = write_demo_studies(tmp_path / "again", OPTIONS)
    assert again == manifest
    for path in out.rglob("*.nii.gz"):
        twin = tmp_path / "again" / path.relative_to(out)
        np.testing.assert_array_equal(load(path), load(twin))
    write_demo_studies(
        tmp_path / "other",
        DemoOptions(n=1, seed=4, n_final=1, n_unlabeled=0, phantom=OPTIONS.phantom),
    )
    assert not np.array_equal(
        load(out / "emlabel_demo/truth/case_000.nii.gz"),
        load(tmp_path / "other" / "emlabel_demo/truth/case_000.nii.gz"),
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": 3, "n_final": 2, "n_unlabeled": 2}, "n"),
        ({"n": 0, "n_final": 0, "n_unlabeled": 0}, "n"),
        ({"n_final": -1}, "n_final"),
        ({"n_unlabeled": -1}, "n_unlabeled"),
        ({"seed": -1}, "seed"),
        ({"n": 2.5}, "n"),
    ],
)
def test_bad_options_are_refused(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field} "):
        DemoOptions(**kwargs)


def test_bad_phantom_option_is_refused():
    with pytest.raises(ValueError, match="shape"):
        DemoOptions(phantom=PhantomOptions(shape=(4, 4, 4)))


def test_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        write_demo_studies(tmp_path, OPTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        write_demo_studies(tmp_path / "afile", OPTIONS)


def test_rewriting_an_earlier_demo_removes_its_stale_files(tmp_path):
    small = PhantomOptions(shape=(24, 24, 16))
    write_demo_studies(tmp_path, DemoOptions(n=4, n_final=1, n_unlabeled=1, phantom=small))
    (tmp_path / "datastore_v2.json").write_text("{}")  # written later by MONAI Label
    manifest = write_demo_studies(
        tmp_path, DemoOptions(n=3, n_final=2, n_unlabeled=0, phantom=small)
    )
    assert sorted(manifest["cases"]) == ["case_000", "case_001", "case_002"]
    assert not list(tmp_path.rglob("case_003*"))  # case 3 is gone everywhere
    assert (tmp_path / "labels/final/case_001.nii.gz").is_file()  # was noisy, now final
    assert not (tmp_path / "emlabel_demo/noisy/case_001.nii.gz").exists()
    assert (tmp_path / "datastore_v2.json").is_file()


def test_a_crash_leaves_no_half_written_file(tmp_path, monkeypatch):
    out = tmp_path / "studies"
    real_write = Path.write_bytes
    calls = {"n": 0}

    def failing_write(self: Path, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 4:
            real_write(self, data[: len(data) // 2])
            raise OSError("disk full")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_demo_studies(out, OPTIONS)
    monkeypatch.undo()
    written = list(out.rglob("*.nii.gz"))
    assert len(written) == 3
    for path in written:
        load(path)  # every file that exists is complete
    assert not [p for p in out.rglob("*") if p.is_file() and p.suffix == ".emlabel-tmp"]
    # the interrupted folder is still recognised as a demo and can be written again
    manifest = write_demo_studies(out, OPTIONS)
    assert len(manifest["cases"]) == OPTIONS.n
    assert not (out / "emlabel_demo" / ".writing.json").exists()
