"""Image-id safety and label checks (shape, geometry, values)."""

import nibabel as nib
import numpy as np
import pytest

from emlabel.data.validation import (
    Geometry,
    check_image_id,
    check_label,
    read_array,
    validate_label_file,
)
from emlabel.errors import InvalidLabelError, InvalidRequestError

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
GEO = Geometry(shape=(8, 8, 4), affine=AFFINE)


def check(label, geometry=GEO, num_classes=3):
    return check_label(
        label,
        Geometry(label.shape, geometry.affine),
        GEO,
        num_classes=num_classes,
        affine_tolerance=1e-2,
    )


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "/etc/passwd", "..", "a\\b", "~root"])
def test_path_like_image_ids_are_refused(bad):
    with pytest.raises(InvalidRequestError):
        check_image_id(bad)


def test_plain_ids_pass():
    assert check_image_id("case_001") == "case_001"
    assert check_image_id("CHNCXR_0001_0.v2") == "CHNCXR_0001_0.v2"


def test_valid_label():
    label = np.zeros((8, 8, 4), np.uint8)
    label[2:4, 2:4, 1] = 2
    assert check(label).values == (0, 2)


def test_shape_mismatch():
    with pytest.raises(InvalidLabelError, match="shape"):
        check(np.zeros((8, 8, 5), np.uint8))


def test_geometry_mismatch_beyond_tolerance():
    flipped = AFFINE.copy()
    flipped[0, 0] = -1.5
    with pytest.raises(InvalidLabelError, match="geometry"):
        check(np.zeros((8, 8, 4), np.uint8), Geometry((8, 8, 4), flipped))
    nudged = AFFINE.copy()
    nudged[0, 3] = 0.005  # within the 0.01 tolerance
    check(np.zeros((8, 8, 4), np.uint8), Geometry((8, 8, 4), nudged))


def test_non_integer_and_out_of_range_values():
    fractional = np.zeros((8, 8, 4), np.float32)
    fractional[0, 0, 0] = 0.5
    with pytest.raises(InvalidLabelError, match="non-integer"):
        check(fractional)
    too_big = np.zeros((8, 8, 4), np.uint8)
    too_big[0, 0, 0] = 3
    with pytest.raises(InvalidLabelError, match=r"\[3\]"):
        check(too_big)
    negative = np.zeros((8, 8, 4), np.int16)
    negative[0, 0, 0] = -1
    with pytest.raises(InvalidLabelError, match="outside"):
        check(negative)
    nan = np.zeros((8, 8, 4), np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(InvalidLabelError, match="NaN"):
        check(nan)


def test_files(tmp_path):
    image = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), AFFINE), image)
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.uint8), AFFINE), good)
    assert validate_label_file(good, image, num_classes=2, affine_tolerance=1e-2).values == (1,)
    text = tmp_path / "text.nii.gz"
    text.write_text("this is not an image")
    with pytest.raises(InvalidLabelError, match="not a readable image"):
        validate_label_file(text, image, num_classes=2, affine_tolerance=1e-2)
    array, geometry = read_array(good)
    assert array.shape == (8, 8, 4) and np.allclose(geometry.affine, AFFINE)
