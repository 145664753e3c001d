"""AIDE through the real server: corrections become versions; infer reports disagreement."""

from __future__ import annotations

import hashlib

import nibabel as nib
import pytest
from monailabel.client import MONAILabelClient

from tests.test_server import status_of, wait_for_training

pytestmark = pytest.mark.server


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_aide_trains_writes_versions_and_serves(server):
    client = MONAILabelClient(server_url=server.url, tmpdir=str(server.app_dir.parent))
    assert "aide" in client.info()["trainers"] and "aide" in client.info()["models"]
    code, body = status_of(lambda: client.train_start("aide", {"warmup": 3}))
    assert code == 400 and "warmup_epochs" in body

    noisy_files = {p.name: digest(p) for p in (server.studies / "labels" / "noisy").glob("*.nii.gz")}
    assert noisy_files
    client.train_start("aide", {"max_epochs": 2})
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    assert any("aide epoch 1" in line for line in status.get("details", []))

    stats = client.info()["train_stats"]["aide"]
    assert stats["state"] == "DONE" and stats["epochs"] == 2
    for row in stats["history"]:
        assert {"loss_f1", "loss_f2", "dice_f1", "dice_f2", "n_corrected"} <= set(row)
    assert stats["corrected_total"] >= 1

    objects = client.datastore()["objects"]
    versions = [
        (image_id, tag, label["info"]["emlabel"])
        for image_id, obj in objects.items()
        for tag, label in obj["labels"].items()
        if tag.startswith("aide-v")
    ]
    assert len(versions) == stats["data"]["label_versions_written"] == stats["corrected_total"]
    for image_id, tag, prov in versions:
        assert prov["source"] == "aide" and prov["kind"] == "corrected"
        assert prov["iteration"] in (1, 2) and prov["scores"]["network"] in (1, 2)
        assert 0.0 <= prov["scores"]["dice_to_previous"] <= 1.0
        assert prov["parent"] and prov["model"].startswith("aide.pt@sha256:")
        assert objects[image_id]["labels"].get("final") is None  # human labels never corrected
        label = nib.load(server.studies / "labels" / tag / f"{image_id}.nii.gz")
        image = nib.load(server.studies / f"{image_id}.nii.gz")
        assert label.shape == image.shape
    # the imported labels are untouched
    assert {p.name: digest(p) for p in (server.studies / "labels" / "noisy").glob("*.nii.gz")} == noisy_files

    path, params = client.infer("aide", "case_002", {})
    assert 0.0 <= params["aide_disagreement"] <= 1.0
    assert nib.load(path).shape == nib.load(server.studies / "case_002.nii.gz").shape
    info = client.datastore()["objects"]["case_002"]["image"]["info"]["emlabel.aide"]
    assert info["disagreement"] == pytest.approx(params["aide_disagreement"])
