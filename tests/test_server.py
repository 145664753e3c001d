"""The real server, driven by MONAI Label's own client: tasks, clear errors, training."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

pytestmark = pytest.mark.server


def status_of(call) -> tuple[int, str]:
    """HTTP status and body of a client call that is expected to fail."""
    with pytest.raises(MONAILabelClientException) as e:
        call()
    match = re.search(r"Status: (\d+); Response: (.*)", e.value.msg, re.S)
    assert match, e.value.msg
    return int(match.group(1)), match.group(2)


def post_json(url: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body or {}).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def client(server) -> MONAILabelClient:
    return MONAILabelClient(server_url=server.url, tmpdir=str(server.app_dir.parent))


def datastore_snapshot(client: MONAILabelClient) -> str:
    return json.dumps(client.datastore(), sort_keys=True)


def image_geometry(studies: Path, image_id: str) -> tuple[tuple[int, ...], np.ndarray]:
    img = nib.load(studies / f"{image_id}.nii.gz")
    return img.shape, img.affine


def test_info_lists_the_tasks(client):
    info = client.info()
    assert "segmentation" in info["models"]
    assert "segmentation" in info["trainers"]
    assert {"random", "first"} <= set(info["strategies"])
    assert isinstance(info["labels"], list) and "liver" in info["labels"]  # OHIF needs a list


def test_next_sample_returns_an_image_without_a_human_label(client, server):
    sample = client.next_sample("first", {})
    assert sample["id"]
    finals = {p.name.split(".")[0] for p in (server.studies / "labels" / "final").glob("*.nii.gz")}
    assert sample["id"] not in finals
    assert Path(sample["path"]).parent == server.studies


def write_label(path: Path, array: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, affine), path)
    return str(path)


def bad_labels(tmp: Path, shape, affine) -> dict[str, tuple[str, int]]:
    flipped = affine.copy()
    flipped[0, 0] *= -1
    fractional = np.zeros(shape, np.float32)
    fractional[0, 0, 0] = 0.5
    text = tmp / "text.nii.gz"
    text.write_text("definitely not a NIfTI file")
    return {
        "text file": (str(text), 422),
        "wrong shape": (
            write_label(tmp / "shape.nii.gz", np.zeros((4, 4, 4), np.uint8), affine),
            422,
        ),
        "wrong orientation": (
            write_label(tmp / "orient.nii.gz", np.zeros(shape, np.uint8), flipped),
            422,
        ),
        "non-integer": (write_label(tmp / "frac.nii.gz", fractional, affine), 422),
        "outside label map": (
            write_label(tmp / "big.nii.gz", np.full(shape, 42, np.uint8), affine),
            422,
        ),
    }


def test_bad_input_is_refused_with_a_reason_and_nothing_is_stored(client, server, tmp_path):
    image_id = "case_005"
    shape, affine = image_geometry(server.studies, image_id)
    before = datastore_snapshot(client)
    good = write_label(tmp_path / "good.nii.gz", np.zeros(shape, np.uint8), affine)

    for name, (path, expected) in bad_labels(tmp_path, shape, affine).items():
        code, body = status_of(lambda p=path: client.save_label(image_id, p, tag="final"))
        assert code == expected, (name, body)
        assert "detail" in body, name
        assert client.info()["name"] == "EMLabel"  # still up

    checks = [
        (lambda: client.save_label("no_such_case", good, tag="final"), 404, "no_such_case"),
        (lambda: client.save_label("../../etc/passwd", good, tag="final"), 400, "path"),
        (lambda: client.save_label(image_id, good, tag="aide-v001"), 400, "reserved"),
        (lambda: client.infer("segmentation", "no_such_case", {}), 404, "no_such_case"),
        (lambda: client.infer("segmentation", "/etc/passwd", {}), 400, "outside"),
        (lambda: client.infer("segmentation", "../case_000", {}), 400, "path"),
        (lambda: client.infer("no_such_model", image_id, {}), 404, "segmentation"),
        (lambda: client.next_sample("no_such_strategy", {}), 404, "random"),
        (lambda: client.train_start("no_such_trainer", {}), 404, "segmentation"),
        (lambda: client.train_start("segmentation", {"max_epochs": "many"}), 400, "max_epochs"),
    ]
    for call, expected, needle in checks:
        code, body = status_of(call)
        assert code == expected and needle in body, body
        assert client.info()["name"] == "EMLabel"
    code, body = post_json(f"{server.url}/scoring/no_such_method")
    assert code == 404 and "no_such_method" in body["detail"]

    assert datastore_snapshot(client) == before
    assert not (server.studies / "labels" / "final" / f"{image_id}.nii.gz").exists()


def test_a_valid_final_label_becomes_a_version_and_replacing_it_keeps_the_old(
    client, server, tmp_path
):
    image_id = "case_004"
    shape, affine = image_geometry(server.studies, image_id)
    first = np.zeros(shape, np.uint8)
    first[5:15, 5:15, 5:10] = 1
    second = first.copy()
    second[20:25, 20:25, 10:15] = 2
    client.save_label(image_id, write_label(tmp_path / "a.nii.gz", first, affine), tag="final")
    client.save_label(image_id, write_label(tmp_path / "b.nii.gz", second, affine), tag="final")
    labels = client.datastore()["objects"][image_id]["labels"]
    assert labels["final"]["info"]["emlabel"]["kind"] == "human"
    archived = [t for t in labels if t.startswith("final-v")]
    assert len(archived) == 1 and labels[archived[0]]["info"]["emlabel"]["archived"] is True
    old = np.asarray(
        nib.load(server.studies / "labels" / archived[0] / f"{image_id}.nii.gz").dataobj
    )
    assert np.array_equal(old, first)


def wait_for_training(client: MONAILabelClient, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.train_status()
        if status.get("status") not in ("SUBMITTED", "RUNNING", "QUEUED"):
            return status
        time.sleep(1)
    raise AssertionError("training did not finish")


def infer_array(client: MONAILabelClient, image_id: str) -> tuple[nib.Nifti1Image, np.ndarray]:
    path, _ = client.infer("segmentation", image_id, {})
    img = nib.load(path)
    return img, np.asarray(img.dataobj)


def test_training_publishes_a_model_that_infer_serves(client, server):
    image_id = "case_000"
    code, body = status_of(lambda: client.infer("segmentation", image_id, {}))
    assert code == 409 and "not been trained" in body

    client.train_start("segmentation", {"max_epochs": 1})
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    stats = client.info()["train_stats"]["segmentation"]
    assert stats["state"] == "DONE" and stats["epochs"] == 1
    assert (
        stats["label_sources"].get("human", 0) >= 2
        and stats["label_sources"].get("imported", 0) >= 1
    )

    shape, affine = image_geometry(server.studies, image_id)
    img, first = infer_array(client, image_id)
    assert img.shape == shape
    assert np.allclose(img.affine, affine, atol=1e-3)
    assert set(np.unique(first)) <= set(range(len(client.info()["labels"]) + 1))

    model = server.app_dir / "model" / "segmentation.pt"
    first_model = model.read_bytes()
    client.train_start("segmentation", {"max_epochs": 2, "seed": 1})
    assert wait_for_training(client)["status"] == "DONE"
    assert model.read_bytes() != first_model
    _, second = infer_array(client, image_id)
    assert not np.array_equal(first, second)  # the served model changed
