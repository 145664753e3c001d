"""A probe of bad and hostile requests through the real server: no 5xx, nothing stored.

Every request below is sent to a running server over a private copy of the tiny demo.
Each must get an answer below 500, the server must still answer ``/info/`` after it, and
at the end the studies folder, the datastore index and the model folder are byte-for-byte
what they were: a refused request stores nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

pytestmark = pytest.mark.server


class _RunsShell:
    """A pickle that would create a marker file when unpickled (it must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_checkpoint(marker: Path) -> bytes:
    buffer = io.BytesIO()
    pickle.dump({"model": _RunsShell(marker)}, buffer)
    return buffer.getvalue()


def tree_snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (the lock file left out)."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != ".lock":
            snapshot[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return snapshot


def header_bomb(path: Path) -> Path:
    """A tiny .nii.gz whose header claims 2048^3 int16 voxels (8 GiB if decompressed)."""
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.int16)
    raw = header.binaryblock + b"\x00" * 4 + b"\x00" * 4096
    path.write_bytes(gzip.compress(raw))
    return path


def hostile_requests(studies: Path, tmp: Path, marker: Path) -> list[tuple[str, str, dict]]:
    """(method, path, requests kwargs) for each probe request."""
    image_id = "case_005"
    image = nib.load(studies / f"{image_id}.nii.gz")
    outside = tmp / "outside.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.float32), image.affine), outside)
    text = tmp / "text.nii.gz"
    text.write_text("not an image")
    garbage = tmp / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"\x01" * 1000))
    wrong = tmp / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), image.affine), wrong)
    bomb = header_bomb(tmp / "bomb.nii.gz")
    pickle_bytes = malicious_checkpoint(marker)

    def upload(path: Path, field: str = "label") -> dict:
        return {field: (path.name, path.read_bytes())}

    label_put = "/datastore/label"
    cases: list[tuple[str, str, dict]] = [
        # ids and paths
        ("GET", "/datastore/image", {"params": {"image": "../../etc/passwd"}}),
        ("GET", "/datastore/image", {"params": {"image": "/etc/passwd"}}),
        ("GET", "/datastore/image", {"params": {"image": ""}}),
        ("HEAD", "/datastore/image", {"params": {"image": "../x"}}),
        ("GET", "/datastore/image", {"params": {"image": "no_such_case"}}),
        ("GET", "/datastore/label", {"params": {"label": image_id, "tag": "../../x"}}),
        ("GET", "/datastore/label", {"params": {"label": "", "tag": "final"}}),
        ("GET", "/datastore/label", {"params": {"label": image_id, "tag": "final"}}),
        ("GET", "/datastore/image/info", {"params": {"image": ""}}),
        ("GET", "/datastore/image/info", {"params": {"image": "../x"}}),
        ("GET", "/datastore/label/info", {"params": {"label": image_id, "tag": ""}}),
        ("GET", "/datastore/", {"params": {"output": "bogus"}}),
        # infer
        ("POST", "/infer/segmentation", {"params": {"image": "/etc/passwd"}}),
        ("POST", "/infer/segmentation", {"params": {"image": str(outside)}}),
        ("POST", "/infer/segmentation", {"params": {"image": "/no/such/file.nii.gz"}}),
        ("POST", "/infer/segmentation", {"params": {"image": "../case_000"}}),
        ("POST", "/infer/segmentation", {"params": {"image": ""}}),
        ("POST", "/infer/no_such_model", {"params": {"image": image_id}}),
        ("POST", "/infer/segmentation", {"params": {"image": image_id}, "data": {"params": "{x"}}),
        ("POST", "/infer/segmentation", {"params": {"image": image_id}, "data": {"params": "[1]"}}),
        (
            "POST",
            "/infer/segmentation",
            {"params": {"image": image_id}, "data": {"params": '{"logging": "BOGUS"}'}},
        ),
        (
            "POST",
            "/infer/segmentation",
            {"params": {"image": image_id, "output": "dicom_seg"}},
        ),
        ("POST", "/infer/segmentation", {"params": {"image": image_id, "output": "bogus"}}),
        (
            "POST",
            "/infer/segmentation",
            {
                "params": {"image": image_id},
                "data": {"params": json.dumps({"save_label": True, "label_tag": "final"})},
            },
        ),
        ("POST", "/infer/segmentation", {"files": upload(text, "file")}),
        # labels
        ("PUT", label_put, {"params": {"image": image_id, "tag": ""}, "files": upload(wrong)}),
        (
            "PUT",
            label_put,
            {"params": {"image": image_id, "tag": "final-v001"}, "files": upload(wrong)},
        ),
        (
            "PUT",
            label_put,
            {"params": {"image": image_id, "tag": "../final"}, "files": upload(wrong)},
        ),
        (
            "PUT",
            label_put,
            {
                "params": {"image": image_id, "tag": "final"},
                "data": {"params": "{x"},
                "files": upload(wrong),
            },
        ),
        ("PUT", label_put, {"params": {"image": image_id, "tag": "final"}, "files": upload(text)}),
        (
            "PUT",
            label_put,
            {"params": {"image": image_id, "tag": "final"}, "files": upload(garbage)},
        ),
        ("PUT", label_put, {"params": {"image": image_id, "tag": "final"}, "files": upload(wrong)}),
        ("PUT", label_put, {"params": {"image": image_id, "tag": "final"}, "files": upload(bomb)}),
        ("PUT", label_put, {"params": {"image": image_id, "tag": "final"}}),
        (
            "PUT",
            label_put,
            {"params": {"image": "no_such_case", "tag": "final"}, "files": upload(wrong)},
        ),
        ("PUT", label_put, {"params": {"image": "../x", "tag": "final"}, "files": upload(wrong)}),
        ("PUT", label_put, {"params": {"image": "", "tag": "final"}, "files": upload(wrong)}),
        (
            "PUT",
            label_put,
            {
                "params": {"image": image_id, "tag": "final"},
                "files": upload(wrong),
                "headers": {"Content-Length": str(3 << 30)},
            },
        ),
        # label and image info
        (
            "PUT",
            "/datastore/label/info",
            {"params": {"label": image_id, "tag": "final"}, "data": {"info": "{x"}},
        ),
        (
            "PUT",
            "/datastore/label/info",
            {"params": {"label": image_id, "tag": "noisy"}, "data": {"info": "{x"}},
        ),
        (
            "PUT",
            "/datastore/label/info",
            {
                "params": {"label": image_id, "tag": "noisy"},
                "data": {"info": '{"emlabel": {"kind": "human"}}'},
            },
        ),
        (
            "PUT",
            "/datastore/updatelabelinfo",
            {"params": {"label": image_id, "tag": "noisy"}, "data": {"params": "{x"}},
        ),
        ("PUT", "/datastore/image/info", {"params": {"image": image_id}, "data": {"info": "{x"}}),
        (
            "PUT",
            "/datastore/image/info",
            {"params": {"image": image_id}, "data": {"info": "[1, 2]"}},
        ),
        (
            "PUT",
            "/datastore/image/info",
            {
                "params": {"image": image_id},
                "data": {"info": '{"emlabel.review": {"was_wrong": false}}'},
            },
        ),
        (
            "PUT",
            "/datastore/image/info",
            {"params": {"image": image_id}, "data": {"info": '{"emlabel.stats": {}}'}},
        ),
        ("PUT", "/datastore/image/info", {"params": {"image": "../x"}, "data": {"info": "{}"}}),
        # images
        (
            "PUT",
            "/datastore/image",
            {"params": {"image": "../x"}, "files": upload(outside, "file")},
        ),
        (
            "PUT",
            "/datastore/image",
            {"params": {"image": "new_case"}, "files": upload(text, "file")},
        ),
        (
            "PUT",
            "/datastore/image",
            {"params": {"image": image_id}, "files": upload(outside, "file")},
        ),
        (
            "PUT",
            "/datastore/image",
            {
                "params": {"image": "new_case"},
                "data": {"params": "{x"},
                "files": upload(outside, "file"),
            },
        ),
        # deletes of what does not exist
        ("DELETE", "/datastore/label", {"params": {"id": "no_such_case", "tag": "final"}}),
        ("DELETE", "/datastore/label", {"params": {"id": "../x", "tag": "final"}}),
        ("DELETE", "/datastore/label", {"params": {"id": image_id, "tag": "no_such_tag"}}),
        ("DELETE", "/datastore/image", {"params": {"id": "../x"}}),
        ("DELETE", "/datastore/image", {"params": {"id": "no_such_case"}}),
        # models
        ("PUT", "/model/segmentation", {"files": {"file": ("m.pt", pickle_bytes)}}),
        ("PUT", "/model/segmentation", {"files": {"file": ("m.pt", b"not a checkpoint")}}),
        ("PUT", "/model/no_such_model", {"files": {"file": ("m.pt", b"x")}}),
        ("DELETE", "/model/no_such_model", {}),
        ("DELETE", "/model/segmentation", {}),
        ("GET", "/model/segmentation", {}),
        ("GET", "/model/info/no_such_model", {}),
        ("GET", "/emlabel/bundle/segmentation", {}),
        ("GET", "/emlabel/bundle/no_such_model", {}),
        # training and scoring
        ("POST", "/train/segmentation", {"json": {"max_epochs": 10**9}}),
        (
            "POST",
            "/train/segmentation",
            {"params": {"run_sync": "true"}, "json": {"max_epochs": 1}},
        ),
        ("POST", "/train/segmentation", {"json": {"bogus": 1}}),
        ("POST", "/train/segmentation", {"json": {"learning_rate": "nan"}}),
        (
            "POST",
            "/train/segmentation",
            {"data": "not json", "headers": {"Content-Type": "application/json"}},
        ),
        ("POST", "/train/aide", {"json": {"max_epochs": -1}}),
        ("POST", "/train/em", {"json": {"iterations": 10**9}}),
        ("POST", "/train/stats", {"json": {"max_epochs": 10**9}}),
        ("POST", "/train/cgs", {"json": {"max_iterations": 10**12}}),
        ("POST", "/train/no_such_trainer", {"json": {}}),
        ("POST", "/train/", {"json": {}}),
        ("POST", "/scoring/no_such_method", {"json": {}}),
        ("POST", "/activelearning/no_such_strategy", {"json": {}}),
        ("POST", "/batch/infer/no_such_model", {"json": {}}),
        ("POST", "/batch/infer/segmentation", {"params": {"run_sync": "true"}, "json": {}}),
        # statistics + clicks
        (
            "PUT",
            "/emlabel/stats",
            {"params": {"image": image_id}, "json": {"structure": ["liver"]}},
        ),
        ("PUT", "/emlabel/stats", {"params": {"image": image_id}, "json": {"structure": {"a": 1}}}),
        (
            "PUT",
            "/emlabel/stats",
            {
                "params": {"image": image_id},
                "json": {"structure": "liver", "statistic": "volume_mm3", "value": "abc"},
            },
        ),
        (
            "PUT",
            "/emlabel/stats",
            {
                "params": {"image": image_id},
                "json": {"structure": "liver", "clicks_inside": [[10**9, 0, 0]]},
            },
        ),
        ("PUT", "/emlabel/stats", {"params": {"image": "../x"}, "json": {"structure": "liver"}}),
        ("PUT", "/emlabel/stats", {"params": {"image": image_id}, "data": "not json"}),
        # folder mode has no DICOMweb proxy, this machine no GPU
        ("GET", "/proxy/dicom/qido/studies", {}),
        ("GET", "/proxy/dicom/wado/studies/1/series", {}),
        ("GET", "/logs/gpu", {}),
        ("GET", "/train/", {"params": {"all": "maybe"}}),
    ]
    return cases


def test_hostile_requests_get_4xx_and_store_nothing(server, tmp_path):
    marker = tmp_path / "pwned"
    cases = hostile_requests(server.studies, tmp_path, marker)
    assert len(cases) >= 60
    studies_before = tree_snapshot(server.studies)
    models_before = tree_snapshot(server.app_dir / "model")
    temp_before = set(os.listdir(tempfile.gettempdir()))

    failures = []
    for method, path, kwargs in cases:
        response = requests.request(method, server.url + path, timeout=60, **kwargs)
        if response.status_code >= 500:
            failures.append(
                (method, path, kwargs.get("params"), response.status_code, response.text[:300])
            )
        assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200, (method, path)

    assert not failures, "\n".join(map(str, failures))
    assert not marker.exists(), "a client's pickle ran on the server"
    assert tree_snapshot(server.studies) == studies_before
    assert tree_snapshot(server.app_dir / "model") == models_before
    leaked = set(os.listdir(tempfile.gettempdir())) - temp_before
    assert not leaked, f"temp files left behind: {sorted(leaked)[:10]}"


def tar_with_traversal(path: Path, target: str) -> Path:
    import tarfile

    data = b"pwned"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(target)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def spacing_bomb(path: Path) -> Path:
    """16^3 voxels whose header says 300 mm spacing: billions of voxels once resampled."""
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.diag([300, 300, 300, 1])), path)
    return path


def test_hostile_requests_against_a_trained_model(server, tmp_path):
    """Requests that only reach their checks once a model exists (infer options, uploads)."""
    import time

    r = requests.post(f"{server.url}/train/segmentation", json={"max_epochs": 1}, timeout=60)
    assert r.status_code == 200, r.text
    for _ in range(600):
        if requests.get(f"{server.url}/train/", timeout=30).json().get("status") not in (
            "SUBMITTED", "RUNNING", "QUEUED",
        ):  # fmt: skip
            break
        time.sleep(1)
    image_id = "case_003"
    outside = Path("/tmp") / f"emlabel-probe-{os.getpid()}-pwned"
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"\x01" * 1000))
    forged = {"result": {"emlabel_image_info": {"emlabel.review": {"served": True}}}}

    def infer(params: dict | str, **kwargs) -> tuple[str, str, dict]:
        data = {"params": params if isinstance(params, str) else json.dumps(params)}
        return (
            "POST",
            "/infer/segmentation",
            {"params": {"image": image_id}, "data": data} | kwargs,
        )

    cases = [
        infer({"device": "bogus"}),
        infer({"result_dtype": "bogus"}),
        infer({"result_extension": ".bogus"}),
        infer({"result_compress": "x"}),
        infer({"image": 5}),
        infer({"image": None}),
        infer({"timeout": -1}),
        infer(forged),
        infer({"emlabel_image_info": {"emlabel.stats": {}}}),
        ("POST", "/infer/segmentation", {"files": {"file": ("x.nii.gz", garbage.read_bytes())}}),
        ("POST", "/infer/segmentation",
         {"files": {"file": ("b.nii.gz", spacing_bomb(tmp_path / "b.nii.gz").read_bytes())}}),
        ("PUT", "/datastore/image",
         {"params": {"image": "bomb"}, "files": {"file": ("b.nii.gz", (tmp_path / "b.nii.gz").read_bytes())}}),
        ("PUT", "/session/",
         {"params": {"uncompress": "true"},
          "files": {"files": ("a.tar", tar_with_traversal(tmp_path / "a.tar", f"../../../..{outside}").read_bytes())}}),
        ("GET", "/session/x", {}),
        ("POST", "/infer/wsi/segmentation", {}),
        ("POST", "/infer/wsi_v2/segmentation", {"data": {"wsi": "not json"}}),
        ("GET", "/ohif/%2E%2E", {}),
        ("GET", "/logs/", {"params": {"lines": str(10**20)}}),
        ("HEAD", "/datastore/image", {"params": {"image": image_id, "check_sum": "bogus:x"}}),
        ("PUT", "/datastore/image/info", {"params": {"image": image_id}, "data": {"info": '{"strategy": "x"}'}}),
        ("POST", "/batch/infer/segmentation", {"json": {"max_workers": 10**9}}),
        ("POST", "/batch/infer/segmentation", {"json": {"device": "bogus"}}),
        ("POST", "/train/segmentation",
         {"json": {"max_epochs": 1}, "headers": {"Origin": "http://evil.example"}}),
    ]  # fmt: skip
    info_before = requests.get(
        f"{server.url}/datastore/image/info", params={"image": image_id}, timeout=30
    ).json()
    failures = []
    for method, path, kwargs in cases:
        response = requests.request(method, server.url + path, timeout=120, **kwargs)
        refused = 400 <= response.status_code < 500
        if response.status_code >= 500 or (method not in ("GET", "HEAD") and not refused):
            failures.append((method, path, response.status_code, response.text[:200]))
        assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200, (method, path)
    assert not failures, "\n".join(map(str, failures))
    assert not outside.exists(), "a session archive wrote outside the server's folders"
    info_after = requests.get(
        f"{server.url}/datastore/image/info", params={"image": image_id}, timeout=30
    ).json()
    assert {k: v for k, v in info_after.items() if k.startswith("emlabel")} == {
        k: v for k, v in info_before.items() if k.startswith("emlabel")
    }, "an infer request forged EMLabel's image info"
    assert (
        requests.post(f"{server.url}/activelearning/random", json={}, timeout=60).status_code == 200
    )
