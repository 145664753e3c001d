"""The lockdown findings, each through the real server: no client code, nothing lost.

Tiny demo: case_000/001 have human finals, case_002/003 imported noisy labels,
case_004/005 no label.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from tests.test_hostile_probe import malicious_checkpoint

pytestmark = pytest.mark.server


def datastore_json(server) -> dict:
    return requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()


def labels_of(server, image_id: str) -> dict:
    return datastore_json(server)["objects"][image_id]["labels"]


def wait_for(server, kind: str, timeout: float = 300) -> dict:
    """Wait until the newest train (``kind='train'``) or batch-infer task has ended."""
    url = f"{server.url}/train/" if kind == "train" else f"{server.url}/batch/infer"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(url, timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING", "QUEUED"):
            return status
        time.sleep(1)
    raise AssertionError(f"{kind} did not finish")


@pytest.fixture(scope="module")
def trained(server):
    """The server after one tiny segmentation training (a served model exists)."""
    r = requests.post(f"{server.url}/train/segmentation", json={"max_epochs": 1}, timeout=60)
    assert r.status_code == 200, r.text
    assert wait_for(server, "train")["status"] == "DONE"
    return server


def test_a_clients_pickle_never_runs(server, tmp_path):
    marker = tmp_path / "pwned"
    payload = malicious_checkpoint(marker)
    r = requests.put(
        f"{server.url}/model/segmentation", files={"file": ("m.pt", payload)}, timeout=60
    )
    assert r.status_code == 422 and "not a safe checkpoint" in r.json()["detail"]
    for method, path in (("GET", "/emlabel/bundle/segmentation"), ("GET", "/info/")):
        requests.request(method, server.url + path, timeout=60)
    assert not marker.exists()
    assert not (server.app_dir / "model" / "segmentation.pt").exists()


def test_checkpoints_on_disk_are_read_without_unpickling(tmp_path):
    from emlabel.checkpoints import CheckpointError, load_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "segmentation.pt"
    path.write_bytes(malicious_checkpoint(marker))
    with pytest.raises(CheckpointError, match="not a safe checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_put_model_takes_only_a_fitting_checkpoint_and_keeps_the_old_one(trained, tmp_path):
    server = trained
    model = server.app_dir / "model" / "segmentation.pt"
    served = model.read_bytes()
    state = torch.load(io.BytesIO(served), weights_only=True)

    wrong = {"model": {"not.a.layer": torch.zeros(3)}}
    buffer = io.BytesIO()
    torch.save(wrong, buffer)
    r = requests.put(
        f"{server.url}/model/segmentation", files={"file": ("m.pt", buffer.getvalue())}, timeout=60
    )
    assert r.status_code == 422 and "does not fit" in r.json()["detail"]
    assert model.read_bytes() == served

    shifted = {k: (v + 0.01 if v.is_floating_point() else v) for k, v in state["model"].items()}
    buffer = io.BytesIO()
    torch.save({"model": shifted, "emlabel": state["emlabel"]}, buffer)
    r = requests.put(
        f"{server.url}/model/segmentation", files={"file": ("m.pt", buffer.getvalue())}, timeout=60
    )
    assert r.status_code == 200, r.text
    kept = server.app_dir / "model" / "versions" / r.json()["previous_version"]
    assert kept.read_bytes() == served
    assert model.read_bytes() != served

    r = requests.delete(f"{server.url}/model/segmentation", timeout=60)
    assert r.status_code == 200, r.text
    assert not model.exists()
    assert (server.app_dir / "model" / "versions" / r.json()["kept_as"]).is_file()
    r = requests.post(f"{server.url}/infer/segmentation", params={"image": "case_000"}, timeout=60)
    assert r.status_code == 409
    # put the newest version back for the tests that follow
    model.write_bytes(buffer.getvalue())


def test_infer_output_is_never_stored_as_a_human_final(trained):
    server = trained
    params = json.dumps({"save_label": True, "label_tag": "final"})
    r = requests.post(
        f"{server.url}/infer/segmentation",
        params={"image": "case_004", "output": "json"},
        data={"params": params},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    labels = labels_of(server, "case_004")
    assert "final" not in labels
    (tag,) = [t for t in labels if t.startswith("segmentation-v")]
    provenance = labels[tag]["info"]["emlabel"]
    assert provenance["kind"] == "pseudo" and provenance["model"].startswith("segmentation.pt@")
    assert "never a human label" in provenance["reason"]


def test_batch_infer_writes_machine_versions_only(trained):
    server = trained
    finals_before = {
        i: o["labels"].get("final", {}).get("info", {}).get("emlabel", {}).get("version")
        for i, o in datastore_json(server)["objects"].items()
    }
    r = requests.post(
        f"{server.url}/batch/infer/segmentation",
        params={"images": "unlabeled"},
        json={"label_tag": "final", "save_label": True, "max_workers": 1},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert wait_for(server, "batch")["status"] == "DONE"
    objects = datastore_json(server)["objects"]
    for image_id, obj in objects.items():
        version = obj["labels"].get("final", {}).get("info", {}).get("emlabel", {}).get("version")
        assert version == finals_before[image_id], image_id
    pseudo = [
        (i, t)
        for i, o in objects.items()
        for t, label in o["labels"].items()
        if label["info"].get("emlabel", {}).get("kind") == "pseudo"
    ]
    assert pseudo, "batch infer stored no version"


def test_deleting_a_final_keeps_it_as_a_deleted_version(server):
    image_id = "case_001"
    version = labels_of(server, image_id)["final"]["info"].get("emlabel", {}).get("version", 0)
    path = server.studies / "labels" / "final" / f"{image_id}.nii.gz"
    data = path.read_bytes()
    r = requests.delete(
        f"{server.url}/datastore/label", params={"id": image_id, "tag": "final"}, timeout=60
    )
    assert r.status_code == 200, r.text
    labels = labels_of(server, image_id)
    assert "final" not in labels
    kept_tag = f"final-v{version:03d}"
    kept = labels[kept_tag]["info"]["emlabel"]
    assert kept["deleted"] is True and kept["deleted_at"] and kept["archived"] is True
    assert (server.studies / "labels" / kept_tag / f"{image_id}.nii.gz").read_bytes() == data


def test_deleting_a_labeled_image_is_refused_and_an_unlabeled_one_is_kept_aside(server):
    r = requests.delete(f"{server.url}/datastore/image", params={"id": "case_002"}, timeout=60)
    assert r.status_code == 409 and "never deleted" in r.json()["detail"]
    assert (server.studies / "case_002.nii.gz").exists()

    image_id = "extra_case"
    source = (server.studies / "case_005.nii.gz").read_bytes()
    r = requests.put(
        f"{server.url}/datastore/image",
        params={"image": image_id},
        files={"file": ("extra_case.nii.gz", source)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    data = (server.studies / f"{image_id}.nii.gz").read_bytes()
    r = requests.delete(f"{server.url}/datastore/image", params={"id": image_id}, timeout=60)
    assert r.status_code == 200, r.text
    assert image_id not in datastore_json(server)["objects"]
    (kept,) = (server.studies / ".emlabel-deleted").glob(f"{image_id}-*")
    assert (kept / f"{image_id}.nii.gz").read_bytes() == data
    assert json.loads((kept / "record.json").read_text())["image"] == image_id


def test_empty_tag_and_emlabel_info_keys_are_refused(server, tmp_path):
    image_id = "case_003"
    image = nib.load(server.studies / f"{image_id}.nii.gz")
    label = tmp_path / "l.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), label)
    r = requests.put(
        f"{server.url}/datastore/label",
        params={"image": image_id, "tag": ""},
        files={"label": (label.name, label.read_bytes())},
        timeout=60,
    )
    assert r.status_code == 400 and "tag is empty" in r.json()["detail"]
    assert "final" not in labels_of(server, image_id)

    info = {"emlabel.review": {"was_wrong": False}}
    r = requests.put(
        f"{server.url}/datastore/image/info",
        params={"image": image_id},
        data={"info": json.dumps(info)},
        timeout=60,
    )
    assert r.status_code == 400 and "written by the server only" in r.json()["detail"]
    r = requests.get(f"{server.url}/datastore/image/info", params={"image": image_id}, timeout=30)
    assert "emlabel.review" not in r.json()


def test_paths_outside_the_studies_folder_are_refused_alike(server, tmp_path):
    elsewhere = tmp_path / "elsewhere.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), elsewhere)
    answers = []
    for image in (str(elsewhere), str(tmp_path / "missing.nii.gz")):
        r = requests.post(f"{server.url}/infer/segmentation", params={"image": image}, timeout=60)
        answers.append((r.status_code, "outside the studies folder" in r.json()["detail"]))
    assert answers == [(400, True), (400, True)]


def test_training_requests_are_bounded_and_never_run_inside_the_request(server):
    r = requests.post(f"{server.url}/train/segmentation", json={"max_epochs": 10**9}, timeout=60)
    assert r.status_code == 400 and "max_epochs" in r.json()["detail"]
    r = requests.post(
        f"{server.url}/train/segmentation",
        params={"run_sync": "true"},
        json={"max_epochs": 1},
        timeout=60,
    )
    assert r.status_code == 400 and "run_sync" in r.json()["detail"]


def test_random_next_sample_survives_quick_repeats(server):
    for _ in range(6):
        r = requests.post(f"{server.url}/activelearning/random", json={}, timeout=60)
        assert r.status_code == 200, r.text


def test_folder_mode_has_no_proxy_and_no_gpu_logs(server):
    for path in ("/proxy/dicom/qido/studies", "/logs/gpu"):
        r = requests.get(server.url + path, timeout=30)
        assert r.status_code == 404, (path, r.text)


def test_rejected_uploads_leave_no_temp_files(server, tmp_path):
    import tempfile

    before = set(os.listdir(tempfile.gettempdir()))
    uploads = Path(server.app_dir) / ".emlabel-uploads"
    text = b"not an image" * 1000
    for _ in range(5):
        r = requests.put(
            f"{server.url}/datastore/label",
            params={"image": "case_003", "tag": "final"},
            files={"label": ("x.nii.gz", text)},
            timeout=60,
        )
        assert r.status_code == 422
    assert set(os.listdir(tempfile.gettempdir())) - before == set()
    assert not any(uploads.iterdir()) if uploads.exists() else True
