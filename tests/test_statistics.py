"""Statistics and clicks: validation, all-or-nothing CSV import, history kept."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from emlabel.data.statistics import INFO_KEY, parse_entry, read_csv, validate_rows
from emlabel.errors import InvalidRequestError
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.settings import AppSettings

LABELS = {"liver": 1, "lesion": 2}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"structure": "heart", "statistic": "volume_mm3", "value": 5}, "unknown structure"),
        ({"structure": "liver", "statistic": "weight", "value": 5}, "unknown statistic"),
        ({"structure": "liver", "statistic": "area_mm2", "value": 5}, "does not apply to a 3D"),
        ({"structure": "liver", "statistic": "volume_mm3", "value": "big"}, "not a number"),
        ({"structure": "liver", "statistic": "volume_mm3", "value": -3}, "positive"),
        (
            {"structure": "liver", "statistic": "volume_mm3", "value": float("nan")},
            "positive finite",
        ),
        ({"structure": "liver", "clicks_inside": [[1, 2, 99]]}, "outside the image"),
        ({"structure": "liver", "clicks_inside": [[1, 2]]}, "3 integers"),
        ({"structure": "liver", "clicks_inside": [[1.5, 2, 3]]}, "3 integers"),
        ({"structure": "liver"}, "give a statistic"),
    ],
)
def test_bad_entries_are_refused_with_the_reason(raw, reason):
    with pytest.raises(InvalidRequestError, match=reason):
        parse_entry(raw, image_id="a", label_map=LABELS, image_shape=(10, 10, 10))


VOLUME = {"structure": "liver", "statistic": "volume_mm3"}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (["liver"], "must be an object"),
        ({"structure": ["liver"], "statistic": "volume_mm3", "value": 5}, "must be a string"),
        ({"structure": {"a": 1}}, "structure must be a string naming a structure, not an object"),
        ({"structure": None, "clicks_inside": [[1, 2, 3]]}, "not null"),
        ({"structure": 1, "clicks_inside": [[1, 2, 3]]}, "not a number"),
        ({"structure": "liver", "statistic": 5, "value": 5}, "statistic must be a string or null"),
        ({"structure": "liver", "statistic": ["volume_mm3"], "value": 5}, "string or null"),
        ({**VOLUME, "value": True}, "not a number"),
        ({**VOLUME, "value": [5]}, "not a number"),
        ({**VOLUME, "value": {"mm3": 5}}, "not a number"),
        ({**VOLUME}, "value None is not a number"),
        ({**VOLUME, "value": 10**400}, "not a number"),
        ({**VOLUME, "value": "1e999"}, "positive finite"),
        ({**VOLUME, "value": float("inf")}, "positive finite"),
        ({"structure": "liver", "clicks_inside": 5}, "must be a list of voxel indices"),
        ({"structure": "liver", "clicks_inside": "1,2,3"}, "must be a list of voxel indices"),
        ({"structure": "liver", "clicks_outside": {"x": 1}}, "must be a list of voxel indices"),
        ({"structure": "liver", "clicks_inside": [5]}, "3 integers"),
        ({"structure": "liver", "clicks_inside": [[True, 1, 2]]}, "3 integers"),
        ({"structure": "liver", "clicks_inside": [["1", 2, 3]]}, "3 integers"),
        ({"structure": "liver", "clicks_inside": [[1, 2, [3]]]}, "3 integers"),
        ({"structure": "liver", "clicks_outside": [[1, 2, 3, 4]]}, "3 integers"),
        ({"structure": "liver", "clicks_inside": [[1, 2, 3]] * 10_001}, "at most 10000"),
        ({**VOLUME, "value": 5, "vlaue": 6}, r"unknown field\(s\) \['vlaue'\]"),
    ],
)
def test_every_field_type_is_checked(raw, reason):
    """A wrongly typed field is a 400 with the reason, never a TypeError (a 500)."""
    with pytest.raises(InvalidRequestError, match=reason) as e:
        parse_entry(raw, image_id="a", label_map=LABELS, image_shape=(10, 10, 10))
    assert e.value.status_code == 400


def test_long_values_are_not_echoed_in_full():
    with pytest.raises(InvalidRequestError) as e:
        parse_entry({"structure": "x" * 10_000}, image_id="a", label_map=LABELS, image_shape=(4,))
    assert len(e.value.message) < 200


def test_good_entries_of_every_form():
    numbers = parse_entry(
        {**VOLUME, "value": 7, "clicks_inside": None, "clicks_outside": []},
        image_id="a", label_map=LABELS, image_shape=(10, 10, 10),
    )  # fmt: skip
    assert (numbers.value, numbers.clicks_inside, numbers.clicks_outside) == (7.0, (), ())
    clicks_only = parse_entry(
        {"structure": "liver", "statistic": None, "clicks_outside": [(0, 0, 9)]},
        image_id="a", label_map=LABELS, image_shape=(10, 10, 10),
    )  # fmt: skip
    assert (clicks_only.statistic, clicks_only.clicks_outside) == (None, ((0, 0, 9),))


def test_good_entry():
    e = parse_entry(
        {"structure": "lesion", "statistic": "volume_mm3", "value": "12.5", "clicks_inside": [[1, 2, 3]]},
        image_id="a", label_map=LABELS, image_shape=(10, 10, 10),
    )  # fmt: skip
    assert (e.value, e.clicks_inside) == (12.5, ((1, 2, 3),))


@pytest.fixture
def store(tmp_path: Path) -> VersionedDatastore:
    studies = tmp_path / "studies"
    studies.mkdir()
    for name in ("img0", "img1"):
        nib.save(
            nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), studies / f"{name}.nii.gz"
        )
    return VersionedDatastore(str(studies), settings=AppSettings(labels=("liver", "lesion")))


def test_csv_import_is_all_or_nothing_and_history_is_kept(store, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "image,structure,statistic,value\n"
        "img0,lesion,volume_mm3,10\n"
        "nope,lesion,volume_mm3,10\n"
        "img1,lesion,volume_mm3,-1\n"
    )
    with pytest.raises(InvalidRequestError) as e:
        store.import_statistics(read_csv(bad))
    assert "line 3: unknown image 'nope'" in e.value.message and "line 4" in e.value.message
    assert INFO_KEY not in store.get_image_info("img0")
    good = tmp_path / "good.csv"
    good.write_text("image,structure,statistic,value\nimg0,lesion,volume_mm3,10\n")
    assert store.import_statistics(read_csv(good), user="dr_a") == 1
    store.store_statistic(
        "img0", {"structure": "lesion", "statistic": "volume_mm3", "value": 12}, source="api"
    )
    record = store.get_image_info("img0")[INFO_KEY]["structures"]["lesion"]
    assert record["value"] == 12 and record["source"] == "api"
    assert record["history"][0]["value"] == 10 and record["history"][0]["user"] == "dr_a"
    with pytest.raises(InvalidRequestError, match="missing column"):
        (tmp_path / "cols.csv").write_text("image,value\nimg0,3\n")
        read_csv(tmp_path / "cols.csv")
    with pytest.raises(InvalidRequestError, match="no rows"):
        validate_rows([], image_shapes={"img0": (8, 8, 4)}, label_map=LABELS)


def test_a_list_as_structure_stores_nothing(store):
    """``PUT /emlabel/stats`` with ``"structure": ["lesion"]`` was a 500 (unhashable list)."""
    with pytest.raises(InvalidRequestError, match="structure must be a string") as e:
        store.store_statistic(
            "img0", {"structure": ["lesion"], "statistic": "volume_mm3", "value": 3}, source="api"
        )
    assert e.value.status_code == 400
    assert INFO_KEY not in store.get_image_info("img0")
