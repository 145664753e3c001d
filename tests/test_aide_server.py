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

    noisy_files = {
        p.name: digest(p) for p in (server.studies / "labels" / "noisy").glob("*.nii.gz")
    }
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
    assert {
        p.name: digest(p) for p in (server.studies / "labels" / "noisy").glob("*.nii.gz")
    } == noisy_files

    path, params = client.infer("aide", "case_002", {})
    assert 0.0 <= params["aide_disagreement"] <= 1.0
    assert nib.load(path).shape == nib.load(server.studies / "case_002.nii.gz").shape
    info = client.datastore()["objects"]["case_002"]["image"]["info"]["emlabel.aide"]
    assert info["disagreement"] == pytest.approx(params["aide_disagreement"])


def test_aide_model_exports_as_a_bundle_that_gives_the_same_labels(server, tmp_path):
    """Runs after the training test above (same module server)."""
    import io
    import shutil
    import subprocess
    import sys
    import urllib.request
    import zipfile

    import numpy as np

    from tests.support.server import server_env

    client = MONAILabelClient(server_url=server.url, tmpdir=str(server.app_dir.parent))
    if client.info()["train_stats"].get("aide", {}).get("state") != "DONE":
        pytest.skip("needs the aide model trained by the test above")
    with urllib.request.urlopen(f"{server.url}/emlabel/bundle/aide", timeout=300) as r:
        zipfile.ZipFile(io.BytesIO(r.read())).extractall(tmp_path)
    bundle = tmp_path / "aide"
    meta = (bundle / "configs" / "metadata.json").read_text()
    assert '"method": "aide"' in meta
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(server.studies / "case_003.nii.gz", data)
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file",
         str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
         "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=server_env(), timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    offline = np.asarray(nib.load(tmp_path / "out" / "case_003_seg.nii.gz").dataobj)
    path, _ = client.infer("aide", "case_003", {})
    served = np.asarray(nib.load(path).dataobj)
    assert len(np.unique(served)) > 1
    assert np.array_equal(offline, served)
