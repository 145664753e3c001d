"""Tests for emlabel.metrics: expected values are worked out by hand (see the comments) or by
an independent brute-force numpy implementation, never copied from the code under test."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from emlabel.metrics import (
    ClassMetrics,
    binary_metrics,
    dice,
    mean_metrics,
    segmentation_metrics,
)

TOL = 1e-5  # MONAI computes distances in float32


def box(shape: tuple[int, ...], *slices: slice) -> np.ndarray:
    """Boolean array of ``shape`` that is True on the box given by ``slices``."""
    a = np.zeros(shape, dtype=bool)
    a[tuple(slices)] = True
    return a


# --- independent reference implementation (numpy only, brute force) -------------------------


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face neighbour outside it (outside the image too)."""
    padded = np.pad(mask, 1)
    inner = padded.copy()
    for axis in range(mask.ndim):
        for shift in (1, -1):
            inner &= np.roll(padded, shift, axis=axis)
    return mask & ~inner[tuple(slice(1, -1) for _ in range(mask.ndim))]


def _directed(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """For each boundary voxel of ``a``, the distance in mm to the nearest boundary voxel of b."""
    sp = np.asarray(spacing, dtype=np.float64)
    pa = np.argwhere(_boundary(a)) * sp
    pb = np.argwhere(_boundary(b)) * sp
    return np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min(axis=1)


def _brute_force(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict:
    d_pr, d_rp = _directed(pred, ref, spacing), _directed(ref, pred, spacing)
    tp = np.count_nonzero(pred & ref)
    fp = np.count_nonzero(pred & ~ref)
    fn = np.count_nonzero(~pred & ref)
    return {
        "dsc": 2 * tp / (2 * tp + fp + fn),
        "ravd": abs(int(pred.sum()) - int(ref.sum())) / int(ref.sum()),
        "assd": float(np.concatenate([d_pr, d_rp]).mean()),
        "mssd": float(max(d_pr.max(), d_rp.max())),
        "hd95": float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
    }


def _assert_metrics(m: ClassMetrics, expected: dict) -> None:
    got = m.as_dict()
    assert set(got) == {"dsc", "ravd", "assd", "mssd", "hd95"}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=TOL), key


# --- hand-computed cases ----------------------------------------------------------------------


def test_identical_masks_are_perfect() -> None:
    a = box((12, 14, 10), slice(2, 9), slice(3, 12), slice(1, 6)) | box(
        (12, 14, 10), slice(5, 11), slice(0, 4), slice(4, 9)
    )
    m = binary_metrics(a, a.copy(), spacing=(0.7, 1.3, 2.0))
    assert m == ClassMetrics(dsc=1.0, ravd=0.0, assd=0.0, mssd=0.0, hd95=0.0)
    assert dice(a, a) == 1.0


CUBE_SHAPE = (16, 16, 16)
CUBE_A = box(CUBE_SHAPE, slice(0, 10), slice(0, 10), slice(0, 10))
ANISO = (1.5, 1.0, 1.0)


def test_cubes_offset_along_x_anisotropic() -> None:
    # Two 10^3 cubes, B shifted by 2 voxels along axis 0 (spacing 1.5 mm there).
    b = box(CUBE_SHAPE, slice(2, 12), slice(0, 10), slice(0, 10))
    # Overlap 8*10*10 = 800 voxels: DSC = 2*800 / (1000 + 1000) = 0.8.
    # Each cube has 10^3 - 8^3 = 488 boundary voxels. Distances A -> B (B -> A is the mirror):
    #   x=0 face, 100 voxels: to B's x=2 face, 2 * 1.5 = 3.0
    #   x=1 ring, 36 voxels: to B's side faces one x-step away, 1.5
    #   x=2..9 rings, 8*36 voxels: lie on B's side faces, 0
    #   x=9 face interior (y, z in 1..8), 64 voxels: min(k, 3.0) with k = min(y, 9-y, z, 9-z) mm
    #     to B's side faces or 3.0 to B's x=11 face: k=1: 28 voxels, k=2: 20, k=3: 12, k=4: 4
    #   sum = 300 + 54 + 28*1 + 20*2 + 12*3 + 4*3 = 470  -> ASSD = 470 / 488
    #   max = 3.0; 116 of 488 values (24%) equal 3.0, so the 95th percentile is 3.0 too.
    m = binary_metrics(CUBE_A, b, spacing=ANISO)
    _assert_metrics(m, {"dsc": 0.8, "ravd": 0.0, "assd": 470 / 488, "mssd": 3.0, "hd95": 3.0})


def test_cubes_offset_along_y_gives_other_mm_distance() -> None:
    # Same shift, along axis 1 (spacing 1.0): the distances change with the axis spacing.
    b = box(CUBE_SHAPE, slice(0, 10), slice(2, 12), slice(0, 10))
    # A -> B: y=0 face 100 voxels at 2.0; y=1 ring 36 at 1.0; y=2..9 rings 0;
    # y=9 face interior (x, z in 1..8): min(1.5*dx, dz, 2.0), dx = min(x, 9-x), dz likewise,
    # each (dx, dz) pair has 4 voxels: dx=1 -> 1.0 + 3*1.5 = 5.5; dx=2,3,4 -> 1 + 3*2 = 7 each;
    # (5.5 + 21) * 4 = 106.  Sum = 200 + 36 + 106 = 342 -> ASSD = 342 / 488.
    # Max 2.0, reached by 100 + 36 voxels (> 5%), so HD95 = 2.0.
    m = binary_metrics(CUBE_A, b, spacing=ANISO)
    _assert_metrics(m, {"dsc": 0.8, "ravd": 0.0, "assd": 342 / 488, "mssd": 2.0, "hd95": 2.0})
    # ... while with isotropic spacing the two shifts are equivalent.
    bx = box(CUBE_SHAPE, slice(2, 12), slice(0, 10), slice(0, 10))
    iso_x = binary_metrics(CUBE_A, bx, spacing=(1.0, 1.0, 1.0))
    iso_y = binary_metrics(CUBE_A, b, spacing=(1.0, 1.0, 1.0))
    assert iso_x.mssd == pytest.approx(2.0, abs=TOL)
    assert iso_x.as_dict() == pytest.approx(iso_y.as_dict(), abs=TOL)


def test_2d_squares() -> None:
    # 10x10 squares, B shifted 3 pixels along axis 1 (0.5 mm there).
    a = box((16, 16), slice(0, 10), slice(0, 10))
    b = box((16, 16), slice(0, 10), slice(3, 13))
    # Overlap 10*7 = 70: DSC = 140 / 200 = 0.7. 36 boundary pixels each; A -> B:
    #   col 0 (10 px): 3 * 0.5 = 1.5; rows 0/9 at col 1 (2 px): 1.0, at col 2 (2 px): 0.5;
    #   rows 0/9 at cols 3..9 (14 px): 0; col 9 rows 1..8: min(min(r, 9-r), 1.5):
    #   r=1,8 -> 1.0, r=2..7 -> 1.5.  Sum = 15 + 2 + 1 + 2 + 9 = 29 -> ASSD = 29/36.
    #   Max 1.5 on 16 of 36 pixels -> HD95 = 1.5.
    m = binary_metrics(a, b, spacing=(1.0, 0.5))
    _assert_metrics(m, {"dsc": 0.7, "ravd": 0.0, "assd": 29 / 36, "mssd": 1.5, "hd95": 1.5})


def test_assd_pools_both_directions() -> None:
    # Reference 10x10 square (36 boundary px), prediction the 4x4 square in its middle
    # (12 boundary px); the two directions have different counts, so pooling matters.
    ref = box((12, 12), slice(0, 10), slice(0, 10))
    pred = box((12, 12), slice(3, 7), slice(3, 7))
    # pred -> ref: every pred boundary pixel is 3 from the nearest side of ref: 12 * 3.
    # ref -> pred: per side, the pixel at offset c in 0..9 is sqrt(9 + (c - clamp(c, 3, 6))^2)
    # away: 4 corners sqrt(18), then 8 * sqrt(13), 8 * sqrt(10), 16 * 3.
    pred_to_ref = 12 * 3.0
    ref_to_pred = 4 * math.sqrt(18) + 8 * math.sqrt(13) + 8 * math.sqrt(10) + 16 * 3.0
    pooled = (pred_to_ref + ref_to_pred) / 48
    mean_of_means = (pred_to_ref / 12 + ref_to_pred / 36) / 2
    assert abs(pooled - mean_of_means) > 0.05  # the case does tell the two apart
    m = binary_metrics(pred, ref, spacing=(1.0, 1.0))
    # DSC = 2*16 / (16 + 100); RAVD = |16 - 100| / 100 = 0.84; max sqrt(18) (the corners);
    # HD95: ref -> pred sorted, position 0.95 * 35 = 33.25 lies among the 4 corner values.
    _assert_metrics(
        m,
        {
            "dsc": 32 / 116,
            "ravd": 0.84,
            "assd": pooled,
            "mssd": math.sqrt(18),
            "hd95": math.sqrt(18),
        },
    )


def test_ravd_of_double_volume_is_one() -> None:
    ref = box((20, 20, 20), slice(2, 7), slice(2, 7), slice(2, 6))  # 100 voxels
    pred = box((20, 20, 20), slice(2, 7), slice(2, 7), slice(2, 10))  # 200 voxels, contains ref
    m = binary_metrics(pred, ref, spacing=(1.0, 1.0, 2.0))
    assert m.ravd == pytest.approx(1.0)
    assert m.dsc == pytest.approx(2 * 100 / 300)
    # The other way round: |100 - 200| / 200.
    assert binary_metrics(ref, pred, spacing=(1.0, 1.0, 2.0)).ravd == pytest.approx(0.5)


def test_zero_one_integer_masks_accepted() -> None:
    a = box((16, 16), slice(0, 10), slice(0, 10))
    b = box((16, 16), slice(0, 10), slice(3, 13))
    as_int = binary_metrics(a.astype(np.uint8), b.astype(np.int64), spacing=(1.0, 0.5))
    assert as_int == binary_metrics(a, b, spacing=(1.0, 0.5))


# --- empty masks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred_empty", "ref_empty", "expected"),
    [
        (True, True, (1.0, 0.0, 0.0)),
        (False, True, (0.0, math.inf, math.inf)),
        (True, False, (0.0, 1.0, math.inf)),
    ],
    ids=["both-empty", "ref-empty", "pred-empty"],
)
def test_empty_conventions(pred_empty: bool, ref_empty: bool, expected: tuple) -> None:
    full = box((8, 9, 10), slice(2, 5), slice(2, 6), slice(3, 7))
    empty = np.zeros((8, 9, 10), dtype=bool)
    pred = empty if pred_empty else full
    ref = empty if ref_empty else full
    dsc, ravd, dist = expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no MONAI warning noise
        m = binary_metrics(pred, ref, spacing=(1.0, 1.0, 1.0))
    assert m == ClassMetrics(dsc=dsc, ravd=ravd, assd=dist, mssd=dist, hd95=dist)
    assert not any(math.isnan(v) for v in m.as_dict().values())
    assert dice(pred, ref) == dsc


def test_no_warnings_for_ordinary_case() -> None:
    b = box(CUBE_SHAPE, slice(2, 12), slice(0, 10), slice(0, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binary_metrics(CUBE_A, b, spacing=ANISO)


# --- against the brute-force reference --------------------------------------------------------


def _random_boxes(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n):
        lo = [int(rng.integers(0, s - 2)) for s in shape]
        hi = [
            int(rng.integers(lo_i + 1, min(lo_i + 8, s) + 1))
            for lo_i, s in zip(lo, shape, strict=True)
        ]
        mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((24, 20), (0.8, 1.7)), ((14, 12, 10), (2.0, 0.6, 1.1))],
)
def test_matches_brute_force(shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    rng = np.random.default_rng(7)
    for _ in range(3):
        pred = _random_boxes(rng, shape, 3)
        ref = _random_boxes(rng, shape, 3)
        _assert_metrics(
            binary_metrics(pred, ref, spacing=spacing), _brute_force(pred, ref, spacing)
        )


def test_masks_touching_the_image_border() -> None:
    # The image border counts as background: padding the image must not change anything.
    a = box((10, 10), slice(0, 6), slice(0, 10))
    b = box((10, 10), slice(0, 8), slice(2, 10))
    m = binary_metrics(a, b, spacing=(1.0, 2.0))
    padded = binary_metrics(np.pad(a, 3), np.pad(b, 3), spacing=(1.0, 2.0))
    assert m.as_dict() == pytest.approx(padded.as_dict(), abs=TOL)
    _assert_metrics(m, _brute_force(a, b, (1.0, 2.0)))


# --- label maps and aggregation ---------------------------------------------------------------


def test_segmentation_metrics_three_classes() -> None:
    ref = np.zeros((20, 20), dtype=np.uint8)
    ref[1:6, 1:6] = 1  # class 1: predicted exactly
    ref[10:14, 2:6] = 2  # class 2: 4x4, prediction twice as wide
    ref[15:19, 12:18] = 3  # class 3: missed by the prediction
    pred = np.zeros_like(ref)
    pred[1:6, 1:6] = 1
    pred[10:14, 2:10] = 2
    labels = {"membrane": 1, "mito": 2, "vesicle": 3}
    out = segmentation_metrics(pred, ref, spacing=(1.0, 1.0), labels=labels)
    assert list(out) == ["membrane", "mito", "vesicle"]  # no background entry
    assert out["membrane"] == ClassMetrics(dsc=1.0, ravd=0.0, assd=0.0, mssd=0.0, hd95=0.0)
    # mito: 16 vs 32 pixels, 16 shared: DSC = 32/48, RAVD = 16/16 = 1; farthest pred boundary
    # pixels are column 9, 4 columns from the reference's column 5: MSSD = 4.0.
    assert out["mito"].dsc == pytest.approx(32 / 48)
    assert out["mito"].ravd == pytest.approx(1.0)
    assert out["mito"].mssd == pytest.approx(4.0, abs=TOL)
    assert out["vesicle"] == ClassMetrics(
        dsc=0.0, ravd=1.0, assd=math.inf, mssd=math.inf, hd95=math.inf
    )
    # Background is scored only when asked for.
    with_bg = segmentation_metrics(pred, ref, spacing=(1.0, 1.0), labels={"background": 0})
    assert list(with_bg) == ["background"]
    assert with_bg["background"].dsc == pytest.approx(dice(pred == 0, ref == 0))


def test_dice_numpy() -> None:
    a = box((10, 10), slice(0, 4), slice(0, 5))  # 20 px
    b = box((10, 10), slice(2, 6), slice(0, 5))  # 20 px, 10 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a.astype(np.uint8), b.astype(np.float32)) == pytest.approx(0.5)
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert binary_metrics(a, b, spacing=(1.0, 1.0)).dsc == pytest.approx(0.5)


def test_mean_metrics_ignores_inf_and_counts_it() -> None:
    c1 = ClassMetrics(dsc=0.8, ravd=0.2, assd=1.0, mssd=3.0, hd95=2.0)
    c2 = ClassMetrics(dsc=0.6, ravd=0.4, assd=2.0, mssd=5.0, hd95=4.0)
    missed = ClassMetrics(dsc=0.0, ravd=1.0, assd=math.inf, mssd=math.inf, hd95=math.inf)
    spurious = ClassMetrics(dsc=0.0, ravd=math.inf, assd=math.inf, mssd=math.inf, hd95=math.inf)
    out = mean_metrics([{"a": c1, "b": missed}, {"a": c2, "b": spurious}, {"a": missed}])
    assert list(out) == ["a", "b"]
    a = out["a"]
    assert a["n_cases"] == 3
    assert a["dsc"] == pytest.approx((0.8 + 0.6 + 0.0) / 3)
    assert a["ravd"] == pytest.approx((0.2 + 0.4 + 1.0) / 3)
    assert a["ravd_n_inf"] == 0
    assert a["assd"] == pytest.approx(1.5)
    assert a["mssd"] == pytest.approx(4.0)
    assert a["hd95"] == pytest.approx(3.0)
    assert a["assd_n_inf"] == a["mssd_n_inf"] == a["hd95_n_inf"] == 1
    b = out["b"]
    assert b["n_cases"] == 2
    assert b["dsc"] == 0.0
    assert b["ravd"] == pytest.approx(1.0)
    assert b["ravd_n_inf"] == 1
    assert math.isnan(b["assd"])  # no finite value to average
    assert b["assd_n_inf"] == 2
    assert mean_metrics([]) == {}


# --- bad input --------------------------------------------------------------------------------


def test_bad_input_raises_value_error() -> None:
    a = np.zeros((5, 6), dtype=bool)
    with pytest.raises(ValueError, match="same shape"):
        binary_metrics(a, np.zeros((5, 7), dtype=bool), spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="one value per image axis"):
        binary_metrics(a, a, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="finite and positive"):
        binary_metrics(a, a, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="2D or 3D"):
        binary_metrics(np.zeros(5, dtype=bool), np.zeros(5, dtype=bool), spacing=(1.0,))
    with pytest.raises(ValueError, match="binary mask"):
        binary_metrics(np.full((5, 6), 2), a, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="same shape"):
        dice(a, np.zeros((6, 5), dtype=bool))
    labels = {"x": 1}
    with pytest.raises(ValueError, match="same shape"):
        segmentation_metrics(np.zeros((4, 4)), np.zeros((4, 5)), spacing=(1, 1), labels=labels)
    with pytest.raises(ValueError, match="one value per image axis"):
        segmentation_metrics(np.zeros((4, 4)), np.zeros((4, 4)), spacing=(1,), labels=labels)
