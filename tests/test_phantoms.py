"""Tests for the synthetic phantoms and the label corruptions.

Expected values come from the brief (structure fractions, HU levels) or are worked out by hand
on small hand-built label maps; nothing is copied from the code under test.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy import ndimage

from emlabel.data import corruptions as C
from emlabel.data.phantoms import PHANTOM_LABELS, PhantomOptions, make_phantom

TINY = PhantomOptions(shape=(32, 32, 24))
BG, LIVER, SPLEEN, KIDNEY, AORTA, ADRENAL, LESION = range(7)


@pytest.fixture(scope="module")
def default_phantom():
    start = time.perf_counter()
    phantom = make_phantom(seed=0)
    return phantom, time.perf_counter() - start


# --- phantoms ---------------------------------------------------------------------------------


def test_label_names_and_values():
    assert PHANTOM_LABELS == (
        "background",
        "liver",
        "spleen",
        "kidney",
        "aorta",
        "adrenal",
        "lesion",
    )


def test_default_phantom_arrays_and_speed(default_phantom):
    phantom, seconds = default_phantom
    assert phantom.image.shape == phantom.label.shape == (64, 64, 48)
    assert phantom.image.dtype == np.float32
    assert phantom.label.dtype == np.uint8
    assert phantom.spacing == (1.6, 1.6, 2.5)
    np.testing.assert_array_equal(phantom.affine, np.diag([1.6, 1.6, 2.5, 1.0]))
    assert seconds < 1.5, f"one default phantom took {seconds:.2f} s"


# Volume fraction ranges from the brief, widened a little (adrenal: within a factor 2).
FRACTION_RANGES = {
    LIVER: (0.07, 0.13),
    SPLEEN: (0.012, 0.025),
    KIDNEY: (0.005, 0.02),
    AORTA: (0.0025, 0.01),
    ADRENAL: (0.00025, 0.001),
    LESION: (0.0015, 0.006),
}


def test_default_shape_fractions(default_phantom):
    label = default_phantom[0].label
    assert set(np.unique(label).tolist()) == set(range(7))
    for value, (low, high) in FRACTION_RANGES.items():
        fraction = np.count_nonzero(label == value) / label.size
        assert low <= fraction <= high, f"{PHANTOM_LABELS[value]}: {fraction:.5f}"
    assert np.count_nonzero(label == ADRENAL) >= 10


@pytest.mark.parametrize("seed", range(5))
def test_tiny_shape_keeps_every_structure(seed):
    label = make_phantom(seed=seed, options=TINY).label
    assert label.shape == (32, 32, 24)
    assert set(np.unique(label).tolist()) <= set(range(7))
    for value in range(1, 7):
        assert np.count_nonzero(label == value) >= 3, PHANTOM_LABELS[value]


@pytest.mark.parametrize("seed", [None, 0, 1, 2, 3, 4])
def test_lesion_is_inside_the_liver(seed, default_phantom):
    """The lesion's 26-neighbourhood ring is (almost) all liver: the liver surrounds it."""
    label = (
        default_phantom[0].label if seed is None else make_phantom(seed=seed, options=TINY).label
    )
    lesion = label == LESION
    ring = ndimage.binary_dilation(lesion, structure=np.ones((3, 3, 3))) & ~lesion
    assert np.mean(label[ring] == LIVER) >= 0.95


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_structures_are_whole_pieces(seed):
    label = make_phantom(seed=seed, options=TINY).label
    for value in (LIVER, SPLEEN, AORTA, ADRENAL, LESION):
        assert ndimage.label(label == value)[1] == 1, PHANTOM_LABELS[value]
    assert ndimage.label(label == KIDNEY)[1] == 2  # left and right


def test_structure_hu_levels():
    """Without noise or bias, each structure's median HU is the brief's tissue value."""
    phantom = make_phantom(seed=1, options=PhantomOptions(noise_hu=0.0, bias_hu=0.0))
    expected = {LIVER: 60, SPLEEN: 50, KIDNEY: 30, LESION: 15}
    for value, hu in expected.items():
        median = float(np.median(phantom.image[phantom.label == value]))
        assert abs(median - hu) <= 20, f"{PHANTOM_LABELS[value]}: {median:.0f} HU"
    # the aorta is only a few voxels across, so partial-volume blur lowers its median: use the
    # brightest tenth (the centre of the tube)
    aorta = float(np.percentile(phantom.image[phantom.label == AORTA], 90))
    assert abs(aorta - 200) <= 20, f"aorta: {aorta:.0f} HU"
    corners = phantom.image[:3, :3, :]
    assert np.all(corners < -950)  # air outside the body
    liver = ndimage.binary_erosion(phantom.label == LIVER, iterations=2)
    assert float(np.std(phantom.image[liver])) < 3.0  # flat without noise or bias


def test_noise_option_sets_the_noise_level():
    phantom = make_phantom(seed=1, options=PhantomOptions(noise_hu=20.0, bias_hu=0.0))
    liver = ndimage.binary_erosion(phantom.label == LIVER, iterations=2)
    assert 15.0 < float(np.std(phantom.image[liver])) < 25.0


def test_aorta_is_a_round_tube_along_z_in_mm():
    """With unequal in-plane spacing, the aorta must still be round in millimetres."""
    spacing = (1.0, 2.0, 2.5)
    label = make_phantom(seed=2, options=PhantomOptions(shape=(64, 32, 24), spacing=spacing)).label
    aorta = label == AORTA
    assert aorta.any(axis=(0, 1)).all()  # present in every slice
    dx, dy = [], []
    for z in range(label.shape[2]):
        i, j = np.nonzero(aorta[:, :, z])
        dx.extend((i - i.mean()) * spacing[0])
        dy.extend((j - j.mean()) * spacing[1])
    ratio = float(np.std(dx) / np.std(dy))
    assert 0.7 < ratio < 1.4, ratio


def test_same_seed_same_phantom_other_seed_differs():
    a = make_phantom(seed=7, options=TINY)
    b = make_phantom(seed=7, options=TINY)
    c = make_phantom(seed=8, options=TINY)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.label, c.label)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"shape": (32, 32)}, "shape"),
        ({"shape": (32, 32, 2)}, "shape"),
        ({"spacing": (1.0, -1.0, 1.0)}, "spacing"),
        ({"noise_hu": -1.0}, "noise_hu"),
        ({"bias_hu": float("nan")}, "bias_hu"),
    ],
)
def test_bad_phantom_options(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PhantomOptions(**kwargs)


# --- corruptions ------------------------------------------------------------------------------

SPACING = (1.0, 1.5, 2.0)


def boxes() -> np.ndarray:
    """A hand-built label map: boxes with gaps between them, a 3x3x3 lesion in the liver."""
    label = np.zeros((30, 30, 20), np.uint8)
    label[2:14, 2:14, 2:12] = LIVER
    label[6:9, 6:9, 5:8] = LESION
    label[18:26, 3:11, 3:11] = SPLEEN  # 8x8x8
    label[18:24, 16:22, 4:10] = KIDNEY  # 6x6x6
    label[4:7, 20:23, :] = AORTA
    label[10:12, 24:26, 14:16] = ADRENAL  # 2x2x2
    return label


def count(label: np.ndarray, value: int) -> int:
    return int(np.count_nonzero(label == value))


def centroid_mm(mask: np.ndarray, spacing=SPACING) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0) * np.asarray(spacing)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_erode_by_one_voxel_leaves_the_inner_box():
    label = boxes()
    out, record = C.erode_or_dilate(
        label, rng=rng(), spacing=SPACING, structure="spleen", mode="erode", voxels=1
    )
    assert count(out, SPLEEN) == 6**3  # 8x8x8 box minus one voxel all round
    assert np.all(out[19:25, 4:10, 4:10] == SPLEEN)
    changed = out != label
    assert np.all(label[changed] == SPLEEN) and np.all(out[changed] == BG)
    assert record["kind"] == "erode_or_dilate" and record["structure"] == "spleen"
    assert record["mode"] == "erode" and record["changed_voxels"] == 8**3 - 6**3


def test_dilate_by_one_voxel_adds_the_six_faces():
    label = boxes()
    out, record = C.erode_or_dilate(
        label, rng=rng(), spacing=SPACING, structure="kidney", mode="dilate", voxels=1
    )
    assert count(out, KIDNEY) == 6**3 + 6 * 6**2  # face connectivity: one layer per face
    changed = out != label
    assert np.all(label[changed] == BG) and np.all(out[changed] == KIDNEY)
    assert record["mode"] == "dilate" and record["changed_voxels"] == 6 * 36


def test_eroded_lesion_voxels_go_back_to_the_liver():
    label = boxes()
    out, _ = C.erode_or_dilate(
        label, rng=rng(), spacing=SPACING, structure="lesion", mode="erode", voxels=1
    )
    assert count(out, LESION) == 1
    assert count(out, LIVER) == count(label, LIVER) + 26
    assert count(out, BG) == count(label, BG)


def test_too_thin_to_erode_falls_back_to_dilate():
    label = boxes()
    out, record = C.erode_or_dilate(
        label, rng=rng(), spacing=SPACING, structure="adrenal", mode="erode", voxels=2
    )
    assert record["mode"] == "dilate"
    assert count(out, ADRENAL) > count(label, ADRENAL)


def test_random_boundary_error_width_is_one_to_three():
    label = make_phantom(seed=3, options=TINY).label
    for seed in range(6):
        out, record = C.erode_or_dilate(label, rng=rng(seed), spacing=TINY.spacing)
        assert 1 <= record["width_voxels"] <= 3
        value = PHANTOM_LABELS.index(record["structure"])
        changed = out != label
        assert changed.any()
        # only voxels at most 3 voxels from the structure's boundary change
        mask = label == value
        near = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_erosion(
            mask, iterations=3
        )
        assert np.all(near[changed])


def test_drop_structure_removes_exactly_that_class():
    label = boxes()
    out, record = C.drop_structure(label, rng=rng(), spacing=SPACING, structure="adrenal")
    assert count(out, ADRENAL) == 0
    assert count(out, BG) == count(label, BG) + 8
    keep = label != ADRENAL
    np.testing.assert_array_equal(out[keep], label[keep])
    assert record == {"kind": "drop_structure", "structure": "adrenal", "voxels": 8}


def test_random_drop_takes_a_small_structure():
    label = boxes()
    for seed in range(5):
        out, record = C.drop_structure(label, rng=rng(seed), spacing=SPACING)
        assert record["structure"] in ("spleen", "kidney", "adrenal")
        assert count(out, PHANTOM_LABELS.index(record["structure"])) == 0


def test_shift_moves_the_centroid_by_the_stated_mm():
    label = boxes()
    out, record = C.shift_structure(
        label, rng=rng(), spacing=SPACING, structure="kidney", shift_mm=(3.0, -3.0, 4.0)
    )
    assert record["shift_voxels"] == [3, -2, 2]
    assert record["shift_mm"] == [3.0, -3.0, 4.0]
    assert count(out, KIDNEY) == count(label, KIDNEY)
    moved = centroid_mm(out == KIDNEY) - centroid_mm(label == KIDNEY)
    np.testing.assert_allclose(moved, [3.0, -3.0, 4.0])
    others = (label != KIDNEY) & (out != KIDNEY)
    np.testing.assert_array_equal(out[others & (label != 0)], label[others & (label != 0)])


def test_shifting_the_liver_carries_its_lesion():
    label = boxes()
    out, _ = C.shift_structure(
        label, rng=rng(), spacing=SPACING, structure="liver", shift_mm=(0.0, 3.0, 0.0)
    )
    for value in (LIVER, LESION):
        assert count(out, value) == count(label, value)
        moved = centroid_mm(out == value) - centroid_mm(label == value)
        np.testing.assert_allclose(moved, [0.0, 3.0, 0.0])


def test_random_shift_is_a_few_mm_and_keeps_the_volume():
    label = make_phantom(seed=4, options=TINY).label
    spacing = TINY.spacing
    for seed in range(5):
        out, record = C.shift_structure(label, rng=rng(seed), spacing=spacing, structure="spleen")
        shift = np.asarray(record["shift_mm"])
        assert 0 < np.linalg.norm(shift) <= 6.0 + np.linalg.norm(spacing) / 2
        before, after = count(label, SPLEEN), count(out, SPLEEN)
        assert 0.8 * before <= after <= before
        moved = centroid_mm(out == SPLEEN, spacing) - centroid_mm(label == SPLEEN, spacing)
        np.testing.assert_allclose(moved, shift, atol=1.0)


def test_shift_below_half_a_voxel_is_refused():
    with pytest.raises(ValueError, match="half a voxel"):
        C.shift_structure(
            boxes(), rng=rng(), spacing=SPACING, structure="kidney", shift_mm=(0.2, 0.2, 0.2)
        )


def test_swap_exchanges_the_two_classes():
    label = boxes()
    out, record = C.swap_structures(
        label, rng=rng(), spacing=SPACING, structures=("spleen", "kidney")
    )
    assert count(out, SPLEEN) == count(label, KIDNEY)
    assert count(out, KIDNEY) == count(label, SPLEEN)
    assert np.all(out[label == SPLEEN] == KIDNEY) and np.all(out[label == KIDNEY] == SPLEEN)
    rest = (label != SPLEEN) & (label != KIDNEY)
    np.testing.assert_array_equal(out[rest], label[rest])
    assert {record["structure"], record["with"]} == {"spleen", "kidney"}


def test_random_swap_changes_two_present_classes():
    label = boxes()
    out, record = C.swap_structures(label, rng=rng(5), spacing=SPACING)
    a, b = (PHANTOM_LABELS.index(record[k]) for k in ("structure", "with"))
    assert a != b
    assert count(out, a) == count(label, b) and count(out, b) == count(label, a)


def test_spurious_blobs_land_on_background_away_from_structures():
    label = boxes()
    out, record = C.add_spurious_blobs(
        label, rng=rng(1), spacing=SPACING, structure="liver", n_blobs=2
    )
    new = out != label
    assert new.any()
    assert np.all(label[new] == BG) and np.all(out[new] == LIVER)
    assert int(new.sum()) == record["voxels"] == sum(b["voxels"] for b in record["blobs"])
    assert record["n_blobs"] == 2 and len(record["blobs"]) == 2
    touching = ndimage.binary_dilation(label != BG) & new
    assert not touching.any()  # false positives, not a grown structure
    assert 1 <= ndimage.label(new)[1] <= 2


def test_random_blobs_are_one_to_three_small_ones():
    label = make_phantom(seed=5, options=TINY).label
    for seed in range(5):
        out, record = C.add_spurious_blobs(label, rng=rng(seed), spacing=TINY.spacing)
        assert 1 <= record["n_blobs"] <= 3
        added = int(np.count_nonzero(out != label))
        # a ball of radius 4.5 mm holds fewer than 4/3*pi*(4.5+1.6)^3 / (1.6*1.6*2.5) voxels
        assert 0 < added <= 3 * 150


def test_relabel_lesion_turns_it_into_liver():
    label = boxes()
    out, record = C.relabel_lesion(label, rng=rng(), spacing=SPACING)
    assert count(out, LESION) == 0
    assert count(out, LIVER) == count(label, LIVER) + 27
    assert record["to"] == "liver" and record["voxels"] == 27
    with pytest.raises(ValueError, match="lesion"):
        C.relabel_lesion(out, rng=rng(), spacing=SPACING)


@pytest.mark.parametrize("kind", C.NOISE_KINDS)
def test_input_is_never_modified(kind):
    label = boxes()
    before = label.copy()
    out, record = C.CORRUPTIONS[kind](label, rng=rng(2), spacing=SPACING)
    np.testing.assert_array_equal(label, before)
    assert not np.shares_memory(out, label)
    assert out.dtype == label.dtype and out.shape == label.shape
    assert not np.array_equal(out, label)
    assert record["kind"] == kind and record["structure"] in PHANTOM_LABELS
    json.dumps(record)  # JSON-friendly


def test_corrupt_label_applies_distinct_kinds():
    label = make_phantom(seed=6, options=TINY).label
    before = label.copy()
    out, records = C.corrupt_label(label, rng=rng(3), spacing=TINY.spacing, n_errors=3)
    np.testing.assert_array_equal(label, before)
    kinds = [r["kind"] for r in records]
    assert len(kinds) == 3 and len(set(kinds)) == 3 and set(kinds) <= set(C.NOISE_KINDS)
    assert not np.array_equal(out, label)
    json.dumps(records)


def test_corrupt_label_default_count_and_determinism():
    label = make_phantom(seed=6, options=TINY).label
    seen = set()
    for seed in range(8):
        out, records = C.corrupt_label(label, rng=rng(seed), spacing=TINY.spacing)
        assert 1 <= len(records) <= 3
        assert not np.array_equal(out, label)
        again, records_again = C.corrupt_label(label, rng=rng(seed), spacing=TINY.spacing)
        np.testing.assert_array_equal(out, again)
        assert records == records_again
        seen.add(len(records))
    assert len(seen) > 1


@pytest.mark.parametrize("n_errors", [0, len(C.NOISE_KINDS) + 1])
def test_corrupt_label_bad_count(n_errors):
    with pytest.raises(ValueError, match="n_errors"):
        C.corrupt_label(boxes(), rng=rng(), spacing=SPACING, n_errors=n_errors)


def test_corruptions_refuse_a_missing_structure():
    label = boxes()
    label[label == ADRENAL] = 0
    with pytest.raises(ValueError, match="adrenal"):
        C.drop_structure(label, rng=rng(), spacing=SPACING, structure="adrenal")
    with pytest.raises(ValueError, match="unknown"):
        C.drop_structure(label, rng=rng(), spacing=SPACING, structure="pancreas")
