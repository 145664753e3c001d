"""Image-id safety and label checks (shape, geometry, values, decompression bombs)."""

import gzip
import time

import nibabel as nib
import nrrd
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


# ----------------------------------------------------------- decompression bombs
def nifti_header(shape, dtype, **fields) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(AFFINE, code=1)
    header.set_sform(AFFINE, code=1)
    for key, value in fields.items():
        header[key] = value
    return header


def image_file(tmp_path, shape=(8, 8, 4)):
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), AFFINE), path)
    return path


def never_read(path):
    raise AssertionError(f"voxel data of {path} was read")


def test_header_claiming_a_huge_volume_is_refused_before_any_data_is_read(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.nii.gz"
    header = nifti_header((2048, 2048, 2048), np.int16, vox_offset=352)  # 16 GiB of voxels
    with gzip.open(bomb, "wb") as f:
        f.write(header.binaryblock + b"\0\0\0\0" + bytes(64))  # header + a few bytes
    image = image_file(tmp_path)
    monkeypatch.setattr("emlabel.data.validation.read_array", never_read)
    start = time.perf_counter()
    with pytest.raises(InvalidLabelError, match=r"shape \(2048, 2048, 2048\)") as e:
        validate_label_file(bomb, image, num_classes=2, affine_tolerance=1e-2)
    assert time.perf_counter() - start < 0.5
    assert e.value.status_code == 422
    assert "claims 8589934592 voxels, the image has 256" in e.value.message


def test_nifti_extensions_too_large_to_be_a_header_are_refused(tmp_path, monkeypatch):
    # nibabel reads extensions eagerly: a 2 GiB one would be inflated on nib.load
    bomb = tmp_path / "ext.nii.gz"
    header = nifti_header((8, 8, 4), np.uint8, vox_offset=2**31)
    with gzip.open(bomb, "wb") as f:
        f.write(header.binaryblock + b"\1\0\0\0" + np.array([2**31 - 352, 4], "<i4").tobytes())
    monkeypatch.setattr("emlabel.data.validation.read_array", never_read)
    start = time.perf_counter()
    with pytest.raises(InvalidLabelError, match=r"not a readable image.*extensions"):
        validate_label_file(bomb, image_file(tmp_path), num_classes=2, affine_tolerance=1e-2)
    assert time.perf_counter() - start < 0.5


def test_truncated_gzip_with_a_matching_header_is_refused_cleanly(tmp_path):
    good = tmp_path / "good.nii.gz"
    rng = np.random.default_rng(0)  # random values: the gzip stream cannot be tiny
    shape = (32, 32, 16)
    nib.save(nib.Nifti1Image(rng.integers(0, 2, shape, dtype=np.uint8), AFFINE), good)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert nib.load(truncated).shape == shape  # the header itself is intact
    image = image_file(tmp_path, shape)
    with pytest.raises(InvalidLabelError, match="not a readable image") as e:
        validate_label_file(truncated, image, num_classes=2, affine_tolerance=1e-2)
    assert e.value.status_code == 422


def test_singleton_channel_and_other_file_types(tmp_path):
    image = image_file(tmp_path)
    channel = tmp_path / "channel.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 1), np.uint8), AFFINE), channel)
    with pytest.raises(InvalidLabelError, match=r"label shape \(8, 8, 4, 1\) does not match"):
        validate_label_file(channel, image, num_classes=2, affine_tolerance=1e-2)
    other = tmp_path / "label.mha"  # ITK would read it, but it cannot be stored as a label
    other.write_bytes(b"ObjectType = Image\n")
    with pytest.raises(InvalidLabelError, match=r"not a readable image.*\.nii\.gz, \.nii, \.nrrd"):
        validate_label_file(other, image, num_classes=2, affine_tolerance=1e-2)


NRRD_HEADER = {
    "space": "left-posterior-superior",
    "space directions": np.diag([1.5, 1.5, 2.0]),
    "space origin": np.zeros(3),
    "kinds": ["domain", "domain", "domain"],
}


def test_nrrd_labels(tmp_path, monkeypatch):
    image = tmp_path / "img.nrrd"
    nrrd.write(str(image), np.zeros((8, 8, 4), np.int16), NRRD_HEADER)
    good = tmp_path / "good.nrrd"
    nrrd.write(str(good), np.ones((8, 8, 4), np.uint8), NRRD_HEADER)  # gzip encoded
    assert validate_label_file(good, image, num_classes=2, affine_tolerance=1e-2).values == (1,)

    big = tmp_path / "big.nrrd"
    nrrd.write(str(big), np.zeros((512, 512, 64), np.uint8), NRRD_HEADER, compression_level=1)
    start = time.perf_counter()
    with pytest.raises(InvalidLabelError, match=r"shape \(512, 512, 64\)"):
        validate_label_file(big, image, num_classes=2, affine_tolerance=1e-2)
    assert time.perf_counter() - start < 0.5

    # the header says 8x8x4, but the gzip stream inflates to 64 MiB: pynrrd would inflate
    # it all before noticing; the check streams it and stops at the first byte too many
    bomb = tmp_path / "bomb.nrrd"
    nrrd.write(str(bomb), np.zeros((8, 8, 4), np.uint8), NRRD_HEADER)
    head = bomb.read_bytes().split(b"\n\n", 1)[0] + b"\n\n"
    bomb.write_bytes(head + gzip.compress(bytes(64 * 2**20), compresslevel=1))
    monkeypatch.setattr("emlabel.data.validation.read_array", never_read)
    start = time.perf_counter()
    with pytest.raises(InvalidLabelError, match="inflates beyond the 256 bytes") as e:
        validate_label_file(bomb, image, num_classes=2, affine_tolerance=1e-2)
    assert time.perf_counter() - start < 0.5
    assert e.value.status_code == 422

    detached = tmp_path / "detached.nrrd"
    detached.write_bytes(
        head.replace(b"encoding: gzip", b"encoding: raw").replace(
            b"\n\n", b"\ndata file: /dev/zero\n\n"
        )
    )
    with pytest.raises(InvalidLabelError, match="detached 'data file' refused"):
        validate_label_file(detached, image, num_classes=2, affine_tolerance=1e-2)
