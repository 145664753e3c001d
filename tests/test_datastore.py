"""The versioned datastore: nothing lost, provenance, validation, atomic writes."""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi import HTTPException

from emlabel.errors import InvalidLabelError, InvalidRequestError, NotFoundError
from emlabel.imports import import_labels, plan_import
from emlabel.labels import LabelKind, Provenance
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.settings import AppSettings

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
SHAPE = (12, 12, 6)


def write(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def label_with(value: int, tmp_path: Path, name: str) -> Path:
    array = np.zeros(SHAPE, np.uint8)
    array[2:6, 2:6, 1:3] = value
    return write(tmp_path / f"{name}.nii.gz", array)


def make_store(tmp_path: Path) -> VersionedDatastore:
    """A studies folder of two blank images (labels organ, lesion) and its datastore."""
    studies = tmp_path / "studies"
    studies.mkdir()
    for i in range(2):
        write(studies / f"img{i}.nii.gz", np.zeros(SHAPE, np.int16))
    return VersionedDatastore(str(studies), settings=AppSettings(labels=("organ", "lesion")))


@pytest.fixture
def store(tmp_path: Path) -> VersionedDatastore:
    return make_store(tmp_path)


def read(store: VersionedDatastore, image_id: str, tag: str) -> np.ndarray:
    return np.asarray(nib.load(store.get_label_uri(image_id, tag)).dataobj)


def test_versions_accumulate_and_old_final_is_kept(store, tmp_path):
    first = label_with(1, tmp_path, "first")
    second = label_with(2, tmp_path, "second")
    store.store_label("img0", str(first), "noisy")
    store.store_label("img0", str(first), "final")
    store.store_label("img0", str(second), "final")  # annotator saves again
    versions = {v.tag: v for v in store.versions("img0")}
    assert set(versions) == {"noisy", "final", "final-v002"}
    assert versions["final-v002"].provenance.archived
    assert read(store, "img0", "final-v002").max() == 1  # the first final survives
    assert read(store, "img0", "final").max() == 2
    assert versions["final"].version == 3 and versions["final"].kind == LabelKind.HUMAN
    assert versions["noisy"].kind == LabelKind.IMPORTED
    assert store.best_label("img0").tag == "final"


def test_machine_versions_get_fresh_tags_with_provenance(store, tmp_path):
    noisy = label_with(1, tmp_path, "noisy")
    store.store_label("img1", str(noisy), "noisy")
    p = Provenance(kind=LabelKind.CORRECTED, source="aide", version=0, parent="noisy", iteration=2)
    a = store.add_version("img1", str(label_with(2, tmp_path, "fix1")), p)
    b = store.add_version("img1", str(label_with(1, tmp_path, "fix2")), p.replace(iteration=3))
    assert (a.tag, b.tag) == ("aide-v002", "aide-v003")
    assert read(store, "img1", "noisy").max() == 1  # parent untouched
    assert read(store, "img1", "aide-v002").max() == 2
    info = store.get_label_info("img1", "aide-v003")["emlabel"]
    assert info["parent"] == "noisy" and info["iteration"] == 3 and info["source"] == "aide"
    assert store.best_label("img1").tag == "aide-v003"
    # the index on disk carries the provenance too (another process sees it)
    on_disk = json.loads(Path(store._datastore_config_path).read_text())
    assert on_disk["objects"]["img1"]["labels"]["aide-v002"]["info"]["emlabel"]["version"] == 2


def test_training_items_use_the_resolver(store, tmp_path):
    store.store_label("img0", str(label_with(1, tmp_path, "a")), "noisy")
    store.store_label("img0", str(label_with(1, tmp_path, "b")), "final")
    store.store_label("img1", str(label_with(1, tmp_path, "c")), "noisy")
    items = {i["id"]: i for i in store.training_items()}
    assert items["img0"]["tag"] == "final" and items["img0"]["kind"] == "human"
    assert items["img1"]["tag"] == "noisy" and items["img1"]["kind"] == "imported"
    assert Path(items["img1"]["label"]).is_file()


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda t: write(t / "s.nii.gz", np.zeros((12, 12, 5), np.uint8)), "shape"),
        (lambda t: write(t / "v.nii.gz", np.full(SHAPE, 7, np.uint8)), "outside"),
        (lambda t: write(t / "f.nii.gz", np.full(SHAPE, 0.5, np.float32)), "non-integer"),
        (
            lambda t: write(t / "o.nii.gz", np.zeros(SHAPE, np.uint8), np.diag([-1.5, 1.5, 2, 1])),
            "geometry",
        ),
        (lambda t: (t / "x.nii.gz").write_text("not an image") or t / "x.nii.gz", "readable"),
    ],
)
def test_bad_labels_store_nothing(store, tmp_path, make, error):
    before = Path(store._datastore_config_path).read_text()
    with pytest.raises(InvalidLabelError, match=error):
        store.store_label("img0", str(make(tmp_path)), "final")
    assert store.versions("img0") == []
    assert not (Path(store._datastore_path) / "labels" / "final" / "img0.nii.gz").exists()
    assert Path(store._datastore_config_path).read_text() == before


def test_bad_requests(store, tmp_path):
    good = str(label_with(1, tmp_path, "g"))
    with pytest.raises(NotFoundError):
        store.store_label("missing", good, "final")
    with pytest.raises(InvalidRequestError):
        store.store_label("../img0", good, "final")
    with pytest.raises(InvalidRequestError, match="reserved"):
        store.store_label("img0", good, "aide-v009")
    # the stock API answers with HTTP errors
    with pytest.raises(HTTPException) as e:
        store.save_label("missing", good, "final", {})
    assert e.value.status_code == 404
    with pytest.raises(HTTPException) as e:
        store.save_label("img0", str(tmp_path / "nope.nii.gz"), "final", {})
    assert e.value.status_code == 422
    with pytest.raises(HTTPException) as e:
        store.update_label_info("img0", "final", {"x": 1})
    assert e.value.status_code == 404


def test_clients_cannot_forge_provenance(store, tmp_path):
    store.save_label(
        "img0", str(label_with(1, tmp_path, "g")), "noisy", {"emlabel": {"kind": "human"}}
    )
    assert store.versions("img0")[0].kind == LabelKind.IMPORTED
    with pytest.raises(HTTPException) as e:
        store.update_label_info("img0", "noisy", {"emlabel": {"kind": "human"}})
    assert e.value.status_code == 400


def test_orphaned_machine_write_is_ignored(store, tmp_path):
    """A crash after the file but before the index leaves a version tag with no provenance."""
    orphan_dir = Path(store._datastore_path) / "labels" / "aide-v007"
    orphan_dir.mkdir(parents=True)
    write(orphan_dir / "img0.nii.gz", np.ones(SHAPE, np.uint8))
    store.refresh()
    # the stock reconcile would index it (and stock routes would serve it); EMLabel does not
    assert "aide-v007" not in store._datastore.objects["img0"].labels
    assert "aide-v007" not in json.dumps(store.json())
    assert store.versions("img0") == []
    assert store.best_label("img0") is None


def test_no_temporary_files_left_behind(store, tmp_path):
    store.store_label("img0", str(label_with(1, tmp_path, "g")), "final")
    store.store_label("img0", str(label_with(2, tmp_path, "h")), "final")
    leftovers = [
        p for p in Path(store._datastore_path).rglob("*") if "tmp" in p.name and p.is_file()
    ]
    assert leftovers == []
    assert oct(os.stat(store.get_label_uri("img0", "final")).st_mode & 0o777) != "0o600"


def test_import_is_all_or_nothing(store, tmp_path):
    folder = tmp_path / "imports"
    folder.mkdir()
    label_with(1, folder, "img0")
    write(folder / "img1.nii.gz", np.full(SHAPE, 9, np.uint8))  # bad values
    with pytest.raises(InvalidRequestError, match="nothing imported") as e:
        import_labels(store, plan_import([folder]), tag="crowd")
    assert "img1.nii.gz" in str(e.value) and "img0" not in str(e.value).split("\n", 1)[1]
    assert store.versions("img0") == [] and store.versions("img1") == []
    (folder / "img1.nii.gz").unlink()
    stored = import_labels(store, plan_import([folder]), tag="crowd", user="worker7")
    assert [v.tag for v in stored] == ["crowd"]
    assert store.versions("img0")[0].provenance.user == "worker7"
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InvalidRequestError, match="not a label file"):
        plan_import([tmp_path / "x.txt"])


def test_a_second_process_view_never_drops_versions(store, tmp_path):
    """The server and a training process hold separate datastore objects on one folder."""
    other = VersionedDatastore(store._datastore_path, settings=store._settings)
    p = Provenance(kind=LabelKind.CORRECTED, source="aide", version=0)
    store.add_version("img0", str(label_with(1, tmp_path, "x")), p)  # the trainer writes
    other.update_image_info("img0", {"emlabel.note": "seen"})  # the server, stale until now
    other.update_label_info("img0", "aide-v001", {"comment": "ok"})
    fresh = VersionedDatastore(store._datastore_path, settings=store._settings)
    assert [v.tag for v in fresh.versions("img0")] == ["aide-v001"]
    assert fresh.get_image_info("img0")["emlabel.note"] == "seen"
    assert other.json()["objects"]["img0"]["labels"]["aide-v001"]["info"]["comment"] == "ok"


def test_add_image_refuses_non_images_and_duplicates(store, tmp_path):
    text = tmp_path / "new.nii.gz"
    text.write_text("not an image")
    with pytest.raises(HTTPException) as e:
        store.add_image("new", str(text), {})
    assert e.value.status_code == 400 and "not stored" in e.value.detail
    with pytest.raises(HTTPException) as e:
        store.add_image("img0", str(write(tmp_path / "img0.nii.gz", np.zeros(SHAPE, np.int16))), {})
    assert e.value.status_code == 400 and "already exists" in e.value.detail
    good = write(tmp_path / "fresh.nii.gz", np.zeros(SHAPE, np.int16))
    assert store.add_image("", str(good), {}) == "fresh"
    assert "fresh" in store.list_images()
