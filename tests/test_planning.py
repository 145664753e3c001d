"""Data-derived planning: fingerprint a studies folder, then plan settings from it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from emlabel.cli import main
from emlabel.data.label_values import reads_as_mask
from emlabel.errors import NotFoundError, SettingsError
from emlabel.planning import (
    PLAN_FILE,
    Plan,
    fingerprint_studies,
    format_plan,
    make_plan,
    plan_studies,
    read_plan,
    write_plan,
)
from emlabel.settings import parse_settings

SHAPE = (32, 28, 24)


def _nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def _blob(shape=SHAPE) -> np.ndarray:
    grid = np.indices(shape)
    centre = np.array(shape)[:, None, None, None] / 2
    return ((grid - centre) ** 2).sum(axis=0) < 6**2


def _ct_folder(root: Path, *, n: int = 3, spacing=(0.8, 0.8, 2.0)) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        image = np.full(SHAPE, -1000, np.int16)
        image[4:-4, 4:-4, :] = 40 + rng.normal(0, 10, (SHAPE[0] - 8, SHAPE[1] - 8, SHAPE[2]))
        blob = _blob()
        image[blob] = 120 + rng.normal(0, 15, blob.sum())
        _nifti(root / f"ct_{i}.nii.gz", image, spacing)
        _nifti(root / "labels" / "final" / f"ct_{i}.nii.gz", blob.astype(np.uint8), spacing)
    return root


def _mr_folder(root: Path, *, n: int = 3) -> Path:
    rng = np.random.default_rng(2)
    for i in range(n):
        image = rng.uniform(0, 1000, SHAPE).astype(np.float32)
        _nifti(root / f"mr_{i}.nii.gz", image)
        _nifti(root / "labels" / "final" / f"mr_{i}.nii.gz", _blob().astype(np.uint8))
    return root


def _png_folder(root: Path, *, colour: bool, mask_value: int = 1, n: int = 3) -> Path:
    rng = np.random.default_rng(3)
    (root / "labels" / "final").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        grey = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        rgb = np.stack([grey, grey, grey], axis=-1)
        if colour:
            rgb[..., 1] = 255 - grey
        Image.fromarray(rgb).save(root / f"xray_{i}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[20:40, 16:48] = mask_value
        Image.fromarray(mask).save(root / "labels" / "final" / f"xray_{i}.png")
    return root


def test_ct_plans_ct_normalisation_from_the_foreground(tmp_path):
    plan = plan_studies(_ct_folder(tmp_path))
    assert (plan.spatial_dims, plan.modality, plan.normalisation) == (3, "CT", "ct")
    lo, hi = plan.intensity_window
    assert 60 < lo < hi < 200  # the blob's ~120 +- 15, not the air or the body
    mean, std = plan.intensity_stats
    assert lo <= mean <= hi and 5 < std < 30 and abs(mean - 120) < 5
    assert plan.target_spacing == pytest.approx((0.8, 0.8, 2.0))
    assert (plan.images, plan.labeled) == (3, 3)
    assert plan.labels == ("label_1",) and "label_values" not in plan.settings_values()


def test_mr_plans_zscore_and_differs_from_ct(tmp_path):
    ct = plan_studies(_ct_folder(tmp_path / "ct"))
    mr = plan_studies(_mr_folder(tmp_path / "mr"))
    assert (mr.modality, mr.normalisation, mr.intensity_stats) == ("MR", "zscore", ())
    assert mr.intensity_window[0] >= 0 and 990 < mr.intensity_window[1] <= 1000
    assert ct.settings_values() != mr.settings_values()
    assert parse_settings(mr.settings_values()).normalisation == "zscore"


def test_ct_without_labels_uses_intensities_above_air(tmp_path):
    root = _ct_folder(tmp_path)
    for f in (root / "labels" / "final").iterdir():
        f.unlink()
    plan = plan_studies(root)
    assert plan.normalisation == "ct" and plan.labeled == 0 and plan.labels == ()
    assert plan.intensity_window[0] > -500  # the body (~40) and the blob, not the air
    assert any("no labels found" in n for n in plan.notes)
    assert "labels" not in plan.settings_values()
    assert parse_settings(plan.settings_values()).labels == parse_settings({}).labels


def test_grey_png_stored_as_rgb_plans_2d_single_channel(tmp_path):
    plan = plan_studies(_png_folder(tmp_path, colour=False))
    assert (plan.spatial_dims, plan.in_channels, plan.modality) == (2, 1, "OT")
    assert plan.target_spacing == (1.0, 1.0) and plan.median_shape == (64, 64)
    assert len(plan.roi_size) == 2 and plan.roi_size == (64, 64)
    assert plan.network_channels == (16, 32, 64, 128)  # 64 / 2**3 = 8 at the bottom
    settings = parse_settings(plan.settings_values())
    assert settings.spatial_dims == 2 and settings.roi_size == (64, 64)


def test_colour_png_plans_three_channels(tmp_path):
    assert plan_studies(_png_folder(tmp_path, colour=True)).in_channels == 3


def test_label_values_become_structures_named_by_value(tmp_path):
    root = tmp_path / "multi"
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:8], labels[10:16], labels[20:26] = 1, 5, 52
    for i in range(2):
        _nifti(root / f"case_{i}.nii.gz", np.full(SHAPE, 100, np.int16) + i)
        _nifti(root / "labels" / "final" / f"case_{i}.nii.gz", labels)
    plan = plan_studies(root)
    assert plan.labels == ("label_1", "label_5", "label_52")
    assert plan.label_values == (1, 5, 52)
    settings = parse_settings(plan.settings_values())
    assert settings.stored_label_map == {"label_1": 1, "label_5": 5, "label_52": 52}

    dataset = {"labels": {"background": 0, "aorta": 52, "liver": 1, "spleen": 5}}
    dataset["channel_names"] = {"0": "CT"}
    (root / "dataset.json").write_text(json.dumps(dataset))
    named = plan_studies(root)
    assert named.labels == ("liver", "spleen", "aorta") and named.label_values == (1, 5, 52)
    assert (named.modality, named.normalisation) == ("CT", "ct")  # from channel_names


def test_8bit_png_masks_plan_one_foreground_structure(tmp_path):
    plan = plan_studies(_png_folder(tmp_path, colour=False, mask_value=255))
    assert plan.labels == ("foreground",) and plan.label_values == ()
    values = plan.settings_values()
    assert values["labels"] == ["foreground"] and "label_values" not in values
    assert reads_as_mask(parse_settings(values))


def test_patch_budget_shrinks_the_largest_axis_and_keeps_unet_multiples(tmp_path):
    root = tmp_path / "big"
    for i in range(2):
        _nifti(root / f"v_{i}.nii.gz", np.zeros((40, 40, 40), np.int16), (1.0, 1.0, 2.0))
    full = plan_studies(root)
    assert full.roi_size == (40, 40, 40) and len(full.network_channels) == 3  # 40/4 >= 8
    small = plan_studies(root, patch_voxels=30_000)
    assert np.prod(small.roi_size) <= 30_000
    levels = len(small.network_channels)
    assert all(s % 2 ** (levels - 1) == 0 and s >= 16 for s in small.roi_size)
    # 40**3 -> 36 -> 32 per axis in turn, then 29 x 32 x 32; 2 levels: multiples of 2
    assert small.roi_size == (28, 32, 32) and levels == 2
    with pytest.raises(SettingsError, match="patch_voxels"):
        plan_studies(root, patch_voxels=100)


def test_roi_is_the_median_shape_resampled_to_the_target_spacing(tmp_path):
    root = tmp_path / "mixed"
    for name, depth, z in (("a", 20, 2.0), ("b", 40, 2.0), ("c", 40, 1.0)):
        _nifti(root / f"{name}.nii.gz", np.zeros((40, 40, depth), np.int16), (1.0, 1.0, z))
    plan = plan_studies(root)
    assert plan.target_spacing == (1.0, 1.0, 2.0) and plan.median_shape == (40, 40, 40)
    assert plan.roi_size == (40, 40, 20)  # z at 2 mm: 20, 40, 20 -> median 20


def test_finals_are_preferred_and_other_tags_are_the_fallback(tmp_path):
    root = _ct_folder(tmp_path, n=2)
    noisy = np.zeros(SHAPE, np.uint8)
    noisy[:4] = 9
    _nifti(root / "labels" / "noisy" / "ct_0.nii.gz", noisy)
    (root / "labels" / ".hidden").mkdir()
    fp = fingerprint_studies(root)
    assert fp.label_source == "final" and fp.label_values == (0, 1)
    for f in (root / "labels" / "final").iterdir():
        f.unlink()
    fp = fingerprint_studies(root)
    assert fp.label_source == "other tags" and fp.label_values == (0, 9) and fp.labeled == 1


def test_fingerprint_reads_top_level_images_only_and_chooses_deterministically(tmp_path):
    root = _mr_folder(tmp_path, n=5)
    (root / ".hidden.nii.gz").write_bytes(b"not an image")
    (root / "sub").mkdir()
    _nifti(root / "sub" / "nested.nii.gz", np.zeros(SHAPE, np.float32))
    fp = fingerprint_studies(root, max_images=2)
    assert fp.images_found == 5 and len(fp.images) == 2
    assert [r.image_id for r in fp.images] == ["mr_0", "mr_4"]  # evenly spread
    again = fingerprint_studies(root, max_images=2)
    assert np.array_equal(fp.foreground_sample, again.foreground_sample)
    data = json.loads(json.dumps(fp.to_dict()))
    assert data["foreground_intensities"]["n"] == fp.foreground_sample.size > 0
    with pytest.raises(NotFoundError):
        fingerprint_studies(tmp_path / "sub" / "missing")


def test_plan_round_trips_through_its_file(tmp_path):
    plan = plan_studies(_ct_folder(tmp_path))
    path = write_plan(plan, tmp_path / PLAN_FILE)
    assert read_plan(path) == plan
    assert Plan.from_dict(json.loads(path.read_text())) == plan
    assert "intensity_window" in format_plan(plan) and "ct" in format_plan(plan)
    path.write_text("{not json")
    with pytest.raises(SettingsError, match="not valid JSON"):
        read_plan(path)
    broken = plan.to_dict() | {"roi_size": [8, 8, 8]}
    path.write_text(json.dumps(broken))
    with pytest.raises(SettingsError, match="roi_size"):
        read_plan(path)
    del broken["roi_size"]
    with pytest.raises(SettingsError, match="missing"):
        Plan.from_dict(broken)


def test_make_plan_refuses_a_fingerprint_without_images(tmp_path):
    fp = fingerprint_studies(_mr_folder(tmp_path, n=1))
    empty = type(fp)(**{**fp.__dict__, "images": ()})
    with pytest.raises(SettingsError, match="no images"):
        make_plan(empty)


def test_cli_plan_writes_the_file(tmp_path, capsys):
    root = _png_folder(tmp_path, colour=False)
    assert main(["plan", "--studies", str(root), "--print-only"]) == 0
    assert not (root / PLAN_FILE).exists() and "spatial_dims" in capsys.readouterr().out
    assert main(["plan", "--studies", str(root), "--patch-voxels", "1024"]) == 0
    out = capsys.readouterr().out
    assert str(root / PLAN_FILE) in out
    plan = read_plan(root / PLAN_FILE)
    assert plan.spatial_dims == 2 and plan.roi_size == (30, 30)  # 64x64 shrunk to 31x31
    assert main(["plan", "--studies", str(tmp_path / "none")]) == 2
