"""``emlabel import-labels --map``: foreign label values mapped onto the app's structures,
the rest dropped and reported, same file format and geometry, nothing stored on a bad map."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from PIL import Image

from emlabel.cli import main
from emlabel.errors import InvalidLabelError, InvalidRequestError
from emlabel.label_map_import import parse_value_map, remap_label, remap_label_file
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.settings import AppSettings

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
SHAPE = (12, 12, 6)
STRUCTURES = AppSettings().stored_label_map  # liver 1, spleen 2, kidney 3, ...


@pytest.fixture
def studies(tmp_path: Path) -> Path:
    """A studies folder with one blank image ``img0`` (default settings: demo labels)."""
    folder = tmp_path / "studies"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), AFFINE), folder / "img0.nii.gz")
    return folder


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    """``img0.nii.gz`` with values 0, 1 (8 voxels), 5 (16 voxels) and 52 (3 voxels)."""
    array = np.zeros(SHAPE, np.uint8)
    array[0:2, 0:2, 0:2] = 1
    array[4:8, 4:8, 2] = 5
    array[10, 10, 0:3] = 52
    folder = tmp_path / "foreign"
    folder.mkdir()
    nib.save(nib.Nifti1Image(array, AFFINE), folder / "img0.nii.gz")
    return folder / "img0.nii.gz"


def stored_versions(studies: Path) -> list:
    return VersionedDatastore(str(studies), settings=AppSettings()).versions("img0")


def test_map_relabels_drops_and_reports(studies, foreign, capsys):
    argv = ["import-labels", "--studies", str(studies), "--map", "5=liver,1=spleen"]
    assert main([*argv, str(foreign)]) == 0
    out = capsys.readouterr().out
    assert "5 -> liver (16 voxels)" in out and "1 -> spleen (8 voxels)" in out
    assert "dropped 52 (3 voxels)" in out
    assert "total: 1 files, 24 voxels mapped, 3 dropped" in out
    datastore = VersionedDatastore(str(studies), settings=AppSettings())
    img = nib.load(datastore.get_label_uri("img0", "noisy"))
    label = np.asarray(img.dataobj)
    liver, spleen = STRUCTURES["liver"], STRUCTURES["spleen"]
    assert set(np.unique(label).tolist()) == {0, liver, spleen}
    source = np.asarray(nib.load(foreign).dataobj)
    np.testing.assert_array_equal(label == liver, source == 5)
    np.testing.assert_array_equal(label == spleen, source == 1)
    np.testing.assert_allclose(img.affine, AFFINE)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [("5=liver,1=pancreas", "valid names: liver, spleen"), ("x=liver", "not an integer")],
)
def test_bad_map_stores_nothing(studies, foreign, capsys, mapping, message):
    argv = ["import-labels", "--studies", str(studies), "--map", mapping, str(foreign)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert stored_versions(studies) == []


def test_parse_value_map():
    assert parse_value_map(" 5 = liver, 6=liver ,1=spleen", structures=STRUCTURES) == {
        5: STRUCTURES["liver"],
        6: STRUCTURES["liver"],
        1: STRUCTURES["spleen"],
    }
    assert parse_value_map("7=liver", structures={"liver": 9}) == {7: 9}  # stored values
    for bad in ("", "5", "5=", "0=liver", "-2=liver", "5=liver,5=spleen", "1.5=liver"):
        with pytest.raises(InvalidRequestError):
            parse_value_map(bad, structures=STRUCTURES)


def test_remap_label_report_and_refusals():
    array = np.array([[0, 5, 5], [52, 1, 0]], np.float32)
    out, report = remap_label(array, {5: 1, 1: 2, 9: 3})
    np.testing.assert_array_equal(out, [[0, 1, 1], [0, 2, 0]])
    assert out.dtype == np.uint8
    assert dict(report.mapped) == {5: (1, 2), 1: (2, 1)}
    assert dict(report.dropped) == {52: 1} and report.missing == (9,)
    assert remap_label(array, {5: 300})[0].dtype == np.uint16
    with pytest.raises(InvalidLabelError, match="non-integer"):
        remap_label(np.array([0.5, 1.0]), {1: 1})


def test_png_and_nrrd_keep_format_and_geometry(tmp_path):
    picture = np.zeros((5, 7), np.uint8)
    picture[1:3, 2:6] = 200
    picture[4, 0] = 9
    Image.fromarray(picture).save(tmp_path / "a.png")
    report = remap_label_file(tmp_path / "a.png", tmp_path / "out" / "a.png", {200: 3})
    with Image.open(tmp_path / "out" / "a.png") as written:
        assert written.format == "PNG"
        np.testing.assert_array_equal(np.asarray(written), np.where(picture == 200, 3, 0))
    assert dict(report.dropped) == {9: 1}

    volume = np.zeros((4, 3, 2), np.int16)
    volume[1, 1, 1] = 7
    header = {"space directions": np.diag([0.5, 0.7, 2.0]), "space origin": [1.0, 2.0, 3.0]}
    header["space"] = "left-posterior-superior"
    nrrd.write(str(tmp_path / "b.nrrd"), volume, header)
    remap_label_file(tmp_path / "b.nrrd", tmp_path / "out" / "b.nrrd", {7: 2})
    data, written_header = nrrd.read(str(tmp_path / "out" / "b.nrrd"))
    np.testing.assert_array_equal(data, np.where(volume == 7, 2, 0))
    np.testing.assert_allclose(written_header["space directions"], header["space directions"])
    np.testing.assert_allclose(written_header["space origin"], header["space origin"])
