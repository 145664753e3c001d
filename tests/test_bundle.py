"""Export to a MONAI bundle and back: verify, run offline, TorchScript, serve (real server)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monailabel.client import MONAILabelClient

from emlabel.bundle import BundleError, export_bundle, verify_metadata_file
from emlabel.bundle.schema import SCHEMA_NAME
from tests.support.server import REPO, running_server, server_env
from tests.test_server import status_of, wait_for_training

pytestmark = pytest.mark.server

SCHEMA = REPO.parent / "shared" / "bundle-schema" / SCHEMA_NAME
IMAGE = "case_001"


@pytest.fixture(scope="module")
def trained(server):
    """The module's server with a 1-epoch segmentation model."""
    client = MONAILabelClient(server_url=server.url, tmpdir=str(server.app_dir.parent))
    client.train_start("segmentation", {"max_epochs": 1})
    assert wait_for_training(client)["status"] == "DONE"
    return server, client


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory) -> Path:
    """Exported with the command a user runs."""
    server, _ = trained
    out = tmp_path_factory.mktemp("bundle") / "seg_bundle"
    run = subprocess.run(
        [sys.executable, "-m", "emlabel.cli", "export-bundle", "--model", "segmentation",
         "--app-dir", str(server.app_dir), "--out", str(out), "--schema", str(SCHEMA)],
        capture_output=True, text=True, env=server_env(), timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def server_labels(
    client: MONAILabelClient, image_id: str, model: str = "segmentation"
) -> np.ndarray:
    path, _ = client.infer(model, image_id, {})
    return np.asarray(nib.load(path).dataobj)


def test_bundle_layout_and_metadata(bundle):
    for rel in ("configs/metadata.json", "configs/inference.json", "models/model.pt",
                "models/model.ts", "LICENSE", "docs/README.md"):  # fmt: skip
        assert (bundle / rel).is_file(), rel
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert channel_def["0"] == "background" and channel_def["1"] == "liver"
    assert meta["emlabel"]["method"] == "segmentation"
    assert meta["emlabel"]["label_sources"]["human"] >= 2
    verify = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata",
         "--meta_file", str(bundle / "configs" / "metadata.json"), "--filepath", str(SCHEMA)],
        capture_output=True, text=True, env=server_env(), timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr[-2000:]
    assert "verified with no error" in verify.stdout + verify.stderr


def test_monai_bundle_run_gives_the_servers_labels(trained, bundle, tmp_path):
    server, client = trained
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(server.studies / f"{IMAGE}.nii.gz", data)
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file",
         str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
         "--dataset_dir", str(data), "--output_dir", str(out)],
        capture_output=True, text=True, env=server_env(), timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    offline = nib.load(out / f"{IMAGE}_seg.nii.gz")
    image = nib.load(server.studies / f"{IMAGE}.nii.gz")
    assert offline.shape == image.shape
    assert np.allclose(offline.affine, image.affine, atol=1e-3)
    served = server_labels(client, IMAGE)
    assert len(np.unique(served)) > 1  # a real comparison, not two empty maps
    assert np.array_equal(np.asarray(offline.dataobj), served)


def test_torchscript_model_gives_the_same_output(bundle):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu"))
    network.eval()
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"), map_location="cpu")
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(network(x), scripted(x), atol=1e-5)


def test_rest_export_returns_a_verified_bundle_zip(trained, tmp_path):
    server, _ = trained
    with urllib.request.urlopen(f"{server.url}/emlabel/bundle/segmentation", timeout=300) as r:
        assert r.status == 200
        archive = zipfile.ZipFile(io.BytesIO(r.read()))
    names = set(archive.namelist())
    assert {"segmentation/configs/metadata.json", "segmentation/models/model.ts"} <= names
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server.url}/emlabel/bundle/no_such_model", timeout=60)
    assert e.value.code == 404 and b"no_such_model" in e.value.read()


def test_broken_metadata_is_refused_with_the_schema_message(bundle, tmp_path):
    broken = tmp_path / "metadata.json"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]
    broken.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata_file(broken, SCHEMA)


def test_export_refuses_missing_model_and_existing_folder(bundle, tmp_path):
    with pytest.raises(BundleError, match="no trained model"):
        export_bundle(checkpoint=tmp_path / "none.pt", out_dir=tmp_path / "b")
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(checkpoint=bundle / "models" / "model.pt", out_dir=bundle)


def test_the_app_serves_the_bundle_and_refuses_a_broken_one(trained, bundle, tmp_path):
    _, client = trained
    expected = server_labels(client, IMAGE)
    work = tmp_path / "second"
    studies = work / "studies"
    shutil.copytree(trained[0].studies, studies)
    from tests.support.server import TINY_CONF

    trainable = tmp_path / "trainable_bundle"  # a bundle with a train config is also a trainer
    shutil.copytree(bundle, trainable)
    (trainable / "configs" / "train.json").write_text(
        json.dumps({"imports": [], "bundle_root": "."})
    )
    conf = dict(TINY_CONF) | {"bundles": f"{bundle},{trainable}"}
    with running_server(studies, work, conf=conf) as second:
        other = MONAILabelClient(server_url=second.url, tmpdir=str(work))
        assert bundle.name in other.info()["models"]
        assert (
            trainable.name in other.info()["trainers"]
            and bundle.name not in other.info()["trainers"]
        )
        assert np.array_equal(server_labels(other, IMAGE, bundle.name), expected)
        code, _ = status_of(lambda: other.infer(bundle.name, "no_such_case", {}))
        assert code == 404

    broken = tmp_path / "broken_bundle"
    shutil.copytree(bundle, broken)
    meta = json.loads((broken / "configs" / "metadata.json").read_text())
    meta["version"] = 3  # schema: must be a string
    (broken / "configs" / "metadata.json").write_text(json.dumps(meta))
    work2 = tmp_path / "third"
    conf = dict(TINY_CONF) | {"bundles": str(broken)}
    with (
        pytest.raises(RuntimeError, match=r"metadata\.json is invalid"),
        running_server(studies, work2, conf=conf, timeout=120),
    ):
        pass
