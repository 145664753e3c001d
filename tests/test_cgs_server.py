"""CGS through the real server: train, serve the generalist only, score IHED, export."""

from __future__ import annotations

import json
import urllib.request

import nibabel as nib
import numpy as np
import pytest
import torch
from monailabel.client import MONAILabelClient

from emlabel.nets import count_parameters
from emlabel.nets.cgs import build_cgs_net, build_plain_unet
from tests.test_server import post_json, status_of, wait_for_training

pytestmark = pytest.mark.server


def test_cgs_trains_serves_the_generalist_and_scores_ihed(server):
    client = MONAILabelClient(server_url=server.url, tmpdir=str(server.app_dir.parent))
    info = client.info()
    assert "cgs" in info["trainers"] and "cgs" in info["models"] and "ihed" in info["scoring"]
    code, body = post_json(f"{server.url}/scoring/ihed?run_sync=true")
    assert code == 400 and "train 'cgs' first" in body["detail"]
    code, body = status_of(lambda: client.train_start("cgs", {"max_iterations": "few"}))
    assert code == 400 and "max_iterations" in body

    client.train_start("cgs", {"max_iterations": 4})
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    stats = client.info()["train_stats"]["cgs"]
    assert stats["state"] == "DONE" and stats["iterations"] == 4
    assert stats["labeled"] >= 2 and stats["unlabeled"] >= 1

    # the served network is the plain U-Net: same parameters as a U-Net without specialists
    payload = torch.load(
        server.app_dir / "model" / "cgs.pt", map_location="cpu", weights_only=False
    )
    k1 = len(info["labels"]) + 1
    plain = build_plain_unet(spatial_dims=3, num_classes=k1, channels=(8, 16, 32, 64, 128))
    full = build_cgs_net(spatial_dims=3, num_classes=k1, channels=(8, 16, 32, 64, 128))
    served = sum(
        v.numel()
        for k, v in payload["model"].items()
        if "running" not in k and "num_batches" not in k
    )
    assert served == count_parameters(plain) < count_parameters(full)
    plain.load_state_dict(payload["model"])  # loads strictly: nothing but the generalist path

    path, _ = client.infer("cgs", "case_003", {})
    assert nib.load(path).shape == nib.load(server.studies / "case_003.nii.gz").shape

    code, result = post_json(f"{server.url}/scoring/ihed?run_sync=true")
    assert code == 200, result
    objects = client.datastore()["objects"]
    for image_id in objects:
        ihed = objects[image_id]["image"]["info"]["emlabel.ihed"]
        assert 0.0 <= ihed["failed_fraction"] <= 1.0
        assert ihed["model"].startswith("cgs.pt@sha256:")
        assert set(ihed["classes"]) <= set(info["labels"])

    with urllib.request.urlopen(f"{server.url}/emlabel/bundle/cgs", timeout=300) as r:
        assert r.status == 200 and len(r.read()) > 1000


def test_ihed_summary_counts_inconsistent_foreground():
    from emlabel.monailabel.cgs import ihed_summary

    k = 2
    out = torch.zeros(k + 1 + 3 * k, 2, 2, 2)
    out[1] = 5.0  # generalist says class 1 everywhere
    out[k + 1 + 1] = 5.0  # head 1 says "mine" everywhere
    out[k + 1 + 3 + 2] = 5.0  # head 2 says "other" everywhere: consistent
    out[k + 1 + 3 + 2, 0, 0, 0] = 0.0
    out[k + 1 + 3 + 1, 0, 0, 0] = 5.0  # ...except one voxel where head 2 also says "mine"
    summary = ihed_summary(out, k, ("a", "b"))
    assert summary["foreground_voxels"] == 8
    assert summary["failed_fraction"] == pytest.approx(1 / 8)
    assert summary["classes"] == {"a": pytest.approx(1 / 8)}
    assert json.dumps(summary)  # JSON-able for image info
    assert np.isfinite(summary["failed_fraction"])
