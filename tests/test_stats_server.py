"""Statistics + clicks through the real server: store them, train `stats`, get weak versions."""

from __future__ import annotations

import json
import urllib.request

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from tests.test_server import wait_for_training

pytestmark = pytest.mark.server


def put(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_stats_from_volumes_and_clicks(server):
    client = MONAILabelClient(server_url=server.url, tmpdir=str(server.app_dir.parent))
    assert "stats" in client.info()["trainers"] and "stats" in client.info()["models"]
    manifest = json.loads((server.studies / "emlabel_demo" / "manifest.json").read_text())
    url = f"{server.url}/emlabel/stats"
    before = json.dumps(client.datastore(), sort_keys=True)
    assert (
        put(f"{url}?image=nope", {"structure": "liver", "statistic": "volume_mm3", "value": 5})[0]
        == 404
    )
    assert (
        put(f"{url}?image=case_004", {"structure": "heart", "statistic": "volume_mm3", "value": 5})[
            0
        ]
        == 400
    )
    assert (
        put(
            f"{url}?image=case_004", {"structure": "liver", "statistic": "volume_mm3", "value": -5}
        )[0]
        == 400
    )
    assert (
        put(f"{url}?image=case_004", {"structure": "liver", "clicks_inside": [[999, 0, 0]]})[0]
        == 400
    )
    assert json.dumps(client.datastore(), sort_keys=True) == before  # nothing stored

    rng = np.random.default_rng(0)
    for image_id in ("case_004", "case_005"):
        truth_img = nib.load(server.studies / manifest["cases"][image_id]["truth"])
        truth = np.asarray(truth_img.dataobj)
        voxel = float(np.prod(truth_img.header.get_zooms()[:3]))
        for name in ("liver", "spleen"):
            value = client.info()["labels"].index(name) + 1
            inside = np.argwhere(truth == value)
            clicks = inside[rng.choice(len(inside), size=5, replace=False)].tolist()
            code, record = put(
                f"{url}?image={image_id}",
                {"structure": name, "statistic": "volume_mm3",
                 "value": float((truth == value).sum()) * voxel, "clicks_inside": clicks},
            )  # fmt: skip
            assert code == 200, record
            assert record["value"] > 0 and len(record["clicks_inside"]) == 5

    client.train_start("stats", {"max_epochs": 2})
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    stats = client.info()["train_stats"]["stats"]
    assert stats["weak_images"] == 2 and len(stats["label_versions_written"]) == 2
    assert stats["grown_label_images"] == 2  # volume + clicks: labels grown (grow_labels)
    objects = client.datastore()["objects"]
    for image_id in ("case_004", "case_005"):
        weak = {t: lab for t, lab in objects[image_id]["labels"].items() if t.startswith("stats-v")}
        assert len(weak) == 1
        provenance = next(iter(weak.values()))["info"]["emlabel"]
        assert provenance["kind"] == "weak" and provenance["source"] == "stats"
        assert "volume_error_liver" in provenance["scores"]

    with urllib.request.urlopen(f"{server.url}/emlabel/bundle/stats", timeout=300) as r:
        assert r.status == 200 and len(r.read()) > 1000  # the stats model exports as a bundle
