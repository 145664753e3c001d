"""2D through the real server: PNG pictures planned, labelled, trained, served, exported.

The studies folder is the 2D demo (``emlabel demo --kind xray``) at 96 x 128 px (not square,
so a transposed axis would show), planned by the server at start.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from monailabel.client import MONAILabelClient
from PIL import Image

from tests.support.server import RunningServer, running_server, server_env
from tests.test_em_server import image_info
from tests.test_server import post_json, wait_for_training
from tests.test_stats_server import put

pytestmark = pytest.mark.server

SHAPE = (96, 128)  # rows, columns
# Small and fast; everything else (2D, spacing, normalisation, structures) from the plan.
CONF_2D = {
    "roi_size": "32,32",
    "network_channels": "8,16,32",
    "num_res_units": "0",
    "max_epochs": "1",
    "train_batch_size": "2",
}


@pytest.fixture(scope="module")
def server2d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from emlabel.cli import import_demo_noisy_labels
    from emlabel.data.demo import DemoOptions, write_demo_studies
    from emlabel.data.xray import XRayOptions

    work = tmp_path_factory.mktemp("server2d")
    studies = work / "studies"
    options = DemoOptions(kind="xray", n=6, n_final=2, n_unlabeled=2, xray=XRayOptions(shape=SHAPE))
    manifest = write_demo_studies(studies, options)
    import_demo_noisy_labels(studies, manifest)
    with running_server(studies, work, conf=CONF_2D) as running:
        running.manifest = manifest  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
def client2d(server2d) -> MONAILabelClient:
    return MONAILabelClient(server_url=server2d.url, tmpdir=str(server2d.app_dir.parent))


def png(path: str | Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture)


def train(client: MONAILabelClient, trainer: str, params: dict) -> dict:
    client.train_start(trainer, params)
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    return client.info()["train_stats"][trainer]


def test_the_server_plans_2d_from_the_pictures(client2d, server2d):
    plan = client2d.info()["emlabel_plan"]
    assert plan["planned"] is True
    settings = plan["settings"]
    assert settings["spatial_dims"] == 2 and settings["in_channels"] == 1
    assert settings["target_spacing"] == [1.0, 1.0]
    assert settings["labels"] == ["lung_left", "lung_right", "heart"]
    assert settings["normalisation"] == "zscore"  # not CT: no HU window
    assert set(plan["overridden"]) == {"roi_size", "network_channels"}
    assert client2d.info()["labels"] == settings["labels"]
    saved = json.loads((server2d.app_dir / "model" / "plan.json").read_text())
    assert saved["settings"]["spatial_dims"] == 2  # beside the models
    assert (Path(server2d.studies) / ".emlabel-plan.json").is_file()


def test_learned_verifier_judges_before_any_segmentation_model(client2d, server2d):
    code, body = post_json(f"{server2d.url}/scoring/verifier?run_sync=true")
    assert 400 <= code < 500 and "train 'verifier'" in json.dumps(body), body
    stats = train(client2d, "verifier", {"steps": 24, "batch_size": 8})
    assert stats["with_segmentation_model"] is False
    assert stats["validation"]["n_labels"] > 0
    assert (server2d.app_dir / "model" / "verifier.pt").is_file()
    code, scores = post_json(f"{server2d.url}/scoring/verifier?run_sync=true")
    assert code == 200 and {"case_002", "case_003"} <= set(scores), scores
    info = image_info(client2d, "case_002")["emlabel.verifier"]
    assert set(info["scores"]) == {"hand_built", "learned"}  # both kept for the reviews
    assert set(info["scores"]["learned"]) == {"lung_left", "lung_right", "heart"}
    assert info["verifier"] == "hand_built" and "reviews scored by both" in info["verifier_choice"]
    assert info["model"] is None and info["learned_model"].startswith("verifier.pt@")


def test_png_final_train_infer_and_next_sample(client2d, server2d, tmp_path):
    studies = Path(server2d.studies)
    truth = png(studies / server2d.manifest["cases"]["case_004"]["truth"])
    assert truth.shape == SHAPE
    label = tmp_path / "case_004.png"
    Image.fromarray(truth.astype(np.uint8)).save(label)
    client2d.save_label("case_004", str(label), tag="final")
    stored = client2d.datastore()["objects"]["case_004"]["labels"]["final"]
    assert stored["ext"] == ".png"
    assert np.array_equal(png(studies / "labels" / "final" / "case_004.png"), truth)

    # A label of the wrong shape (transposed) is refused with the reason.
    wrong = tmp_path / "wrong.png"
    Image.fromarray(truth.T.copy().astype(np.uint8)).save(wrong)
    with pytest.raises(Exception, match="422"):
        client2d.save_label("case_005", str(wrong), tag="final")

    train(client2d, "segmentation", {"max_epochs": 1})
    path, result = client2d.infer("segmentation", "case_005", {})
    assert path.endswith(".png")
    served = png(path)
    assert served.shape == SHAPE  # the image's own rows x columns
    assert set(np.unique(served)) <= {0, 1, 2, 3}
    assert list(result["label_names"]) == ["lung_left", "lung_right", "heart"]

    sample = client2d.next_sample("random", {})
    assert sample["id"] in client2d.datastore()["objects"]


def test_verifier_scoring_and_strategy_in_2d(client2d, server2d):
    code, scores = post_json(f"{server2d.url}/scoring/verifier?run_sync=true")
    assert code == 200 and scores, scores  # the model of the test above exists
    assert {"case_002", "case_003"} <= set(scores)  # noisy labels, scored
    sample = client2d.next_sample("verifier", {})
    assert sample["id"] == max(scores, key=scores.get)
    assert sample["reasons"] and 0 <= sample["score"] <= 1


@pytest.mark.parametrize(
    "trainer,params",
    [("aide", {"max_epochs": 1}), ("cgs", {"max_iterations": 2}), ("em", {"iterations": 1})],
)
def test_every_trainer_runs_on_2d_and_its_model_serves(client2d, server2d, trainer, params):
    stats = train(client2d, trainer, params)
    assert stats, f"{trainer} wrote no train stats"
    if trainer in client2d.info()["models"]:
        path, _ = client2d.infer(trainer, "case_005", {})
        assert png(path).shape == SHAPE
    if trainer == "cgs":  # CGS's inter-head error detection scores 2D labels too
        code, scores = post_json(f"{server2d.url}/scoring/ihed?run_sync=true")
        assert code == 200 and scores, scores


def test_stats_trainer_learns_from_areas_and_clicks(client2d, server2d):
    from emlabel.data.label_files import read_label
    from emlabel.settings import parse_settings

    studies = Path(server2d.studies)
    settings = parse_settings({"labels": "lung_left,lung_right,heart", "spatial_dims": "2",
                               "target_spacing": "1,1", "roi_size": "32,32"})  # fmt: skip
    rng = np.random.default_rng(0)
    for image_id in ("case_002", "case_003"):
        truth = read_label(
            studies / server2d.manifest["cases"][image_id]["truth"], settings=settings
        )
        inside = np.argwhere(truth == 3)  # heart, in the reader's axes (as clicks are given)
        clicks = inside[rng.choice(len(inside), size=4, replace=False)].tolist()
        code, record = put(
            f"{server2d.url}/emlabel/stats?image={image_id}",
            {"structure": "heart", "statistic": "area_mm2", "value": float((truth == 3).sum()),
             "clicks_inside": clicks},
        )  # fmt: skip
        assert code == 200, record
    stats = train(client2d, "stats", {"max_epochs": 1})
    assert stats["weak_images"] == 2
    objects = client2d.datastore()["objects"]
    weak = [t for t in objects["case_002"]["labels"] if t.startswith("stats-v")]
    assert weak and objects["case_002"]["labels"][weak[0]]["ext"] == ".png"


def test_a_2d_bundle_runs_with_monai_bundle(client2d, server2d, tmp_path):
    out = tmp_path / "bundle2d"
    run = subprocess.run(
        [sys.executable, "-m", "emlabel.cli", "export-bundle", "--model", "segmentation",
         "--app-dir", str(server2d.app_dir), "--out", str(out)],
        capture_output=True, text=True, env=server_env(), timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(Path(server2d.studies) / "case_005.png", data)
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file",
         str(out / "configs" / "inference.json"), "--bundle_root", str(out),
         "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=server_env(), timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    offline = png(tmp_path / "out" / "case_005_seg.png")
    served_path, _ = client2d.infer("segmentation", "case_005", {})
    served = png(served_path)
    assert offline.shape == SHAPE
    assert len(np.unique(served)) > 1  # a real comparison
    assert np.array_equal(offline, served)
