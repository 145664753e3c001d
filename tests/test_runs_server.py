"""A killed training through the real server: nothing of it becomes visible, stats ABORTED."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request

import psutil
import pytest
from monailabel.client import MONAILabelClient

from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.settings import AppSettings
from tests.support.server import running_server

pytestmark = pytest.mark.server

TRAIN_PROCESS = "monailabel.interfaces.utils.app"


def training_processes(server) -> list[psutil.Process]:
    """The server's training subprocesses (MONAI Label runs each training as one)."""
    found = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if TRAIN_PROCESS in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def aide_versions(client: MONAILabelClient) -> list[str]:
    return [
        f"{image_id}/{tag}"
        for image_id, obj in client.datastore()["objects"].items()
        for tag in obj["labels"]
        if tag.startswith("aide-v")
    ]


def test_a_killed_aide_training_is_aborted_and_leaves_nothing(tiny_demo_template, tmp_path):
    studies = tmp_path / "studies"
    shutil.copytree(tiny_demo_template, studies)
    model_dir = tmp_path / "app" / "model"
    stats_file = model_dir / "aide.train_stats.json"

    with running_server(studies, tmp_path) as server:
        client = MONAILabelClient(server_url=server.url, tmpdir=str(tmp_path))
        client.train_start("aide", {"max_epochs": 2000})

        def one_epoch_ran():
            stats = client.info()["train_stats"].get("aide") or {}
            return stats if stats.get("state") == "RUNNING" and stats["epochs"] >= 1 else None

        running = wait_for(one_epoch_ran, 120, "an AIDE epoch")
        assert running["pid"] and not (model_dir / "aide.pt").exists()
        [trainer] = training_processes(server)
        assert trainer.pid == running["pid"]
        trainer.kill()
        psutil.wait_procs([trainer], timeout=30)
        # the server notices at once (read side), before any recovery wrote anything
        stats = wait_for(lambda: client.info()["train_stats"]["aide"], 30, "stats")
        assert stats["state"] == "ABORTED", stats
        assert json.loads(stats_file.read_text())["state"] == "RUNNING"
        [journal] = [
            p for p in (studies / ".emlabel-runs").glob("*.json") if not p.name.startswith(".")
        ]
        assert json.loads(journal.read_text())["state"] == "running"

    with running_server(studies, tmp_path) as server:
        client = MONAILabelClient(server_url=server.url, tmpdir=str(tmp_path))
        saved = json.loads(stats_file.read_text())
        assert saved["state"] == "ABORTED" and f"pid {trainer.pid}" in saved["reason"]
        assert saved["epochs"] >= 1
        assert client.info()["train_stats"]["aide"]["state"] == "ABORTED"
        record = json.loads(journal.read_text())
        assert record["state"] == "aborted" and record["method"] == "aide"
        assert aide_versions(client) == []
        with urllib.request.urlopen(f"{server.url}/datastore/", timeout=30) as r:
            tags = json.loads(r.read())["label_tags"]
        assert not [t for t in tags if t.startswith("aide-v")]

    assert not (model_dir / "aide.pt").exists()
    assert not [p for p in model_dir.iterdir() if ".staged-" in p.name or ".tmp-" in p.name]
    datastore = VersionedDatastore(str(studies), settings=AppSettings())
    for image_id in datastore.list_images():
        best = datastore.best_label(image_id)
        assert best is None or not best.tag.startswith("aide-v")
        assert not [v for v in datastore.versions(image_id) if v.tag.startswith("aide-v")]
