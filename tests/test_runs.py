"""Method runs: a trainer's model, label versions and image info appear together or not at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emlabel.atomic import atomic_write_json, atomic_write_with, temp_file_pid
from emlabel.checkpoints import file_sha256, load_checkpoint, publish_checkpoint
from emlabel.labels import LabelKind, Provenance
from emlabel.monailabel import runs
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.runs import RunClosedError, process_fields
from emlabel.monailabel.tasks import StatsFileTrainTask
from tests.test_datastore import SHAPE, make_store, write

INFO = "emlabel.aide"


def label_with(value: int, tmp_path: Path, name: str) -> str:
    array = np.zeros(SHAPE, np.uint8)
    array[2:6, 2:6, 1:3] = value
    return str(write(tmp_path / f"{name}.nii.gz", array))


def correction(**changes) -> Provenance:
    return Provenance(kind=LabelKind.CORRECTED, source="aide", version=0, **changes)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def store(tmp_path: Path) -> VersionedDatastore:
    return make_store(tmp_path)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    publish_checkpoint(folder / "aide.pt", {"w": torch.zeros(2)}, {"method": "aide", "n": 0})
    return folder


class StatsTask(StatsFileTrainTask):
    def __call__(self, request, datastore):  # pragma: no cover - never trained here
        raise NotImplementedError


def running_stats(path: Path, **fields) -> None:
    atomic_write_json({"state": "RUNNING", "epochs": 1} | process_fields() | fields, path)


def journal(store: VersionedDatastore, run_id: str) -> dict:
    return json.loads((store.runs_dir / f"{run_id}.json").read_text())


def rewrite_journal(store: VersionedDatastore, run_id: str, **fields) -> None:
    atomic_write_json(journal(store, run_id) | fields, store.runs_dir / f"{run_id}.json")


def visible_tags(store: VersionedDatastore, image_id: str) -> set[str]:
    fresh = VersionedDatastore(store._datastore_path, settings=store._settings)
    tags = {v.tag for v in fresh.versions(image_id)}
    assert set(fresh.json()["objects"][image_id]["labels"]) == tags
    assert set(fresh.get_labels_by_image_id(image_id)) == tags
    pairs = sum(len(fresh.get_labels_by_image_id(i)) for i in fresh.list_images())
    assert sum(fresh.status()["label_tags"].values()) == pairs
    return tags


def staged_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".staged-" in p.name]


def test_a_failed_run_leaves_nothing_visible(store, model_dir, tmp_path):
    model = model_dir / "aide.pt"
    before = model.read_bytes()
    stats = model_dir / "aide.train_stats.json"
    with (
        pytest.raises(RuntimeError, match="boom"),
        store.begin_run("aide", stats_path=stats) as run,
    ):
        running_stats(stats)
        checksum = run.stage_checkpoint(model, {"w": torch.ones(2)}, {"method": "aide"})
        assert len(checksum) == 64 and staged_files(model_dir)
        version = run.add_version("img0", label_with(1, tmp_path, "a"), correction())
        run.update_image_info("img0", {INFO: {"disagreement": 0.5}})
        raise RuntimeError("boom")
    assert model.read_bytes() == before
    assert staged_files(model_dir) == []
    assert visible_tags(store, "img0") == set()
    assert store.best_label("img0") is None and store.training_items() == []
    assert store.get_label_uri("img0", version.tag) == ""
    assert INFO not in store.get_image_info("img0")
    record = journal(store, run.run_id)
    assert record["state"] == "aborted" and "boom" in record["reason"]
    assert record["pid"] == os.getpid()
    saved = json.loads(stats.read_text())
    assert saved["state"] == "ABORTED" and "boom" in saved["reason"]
    # nothing is deleted: the version is stored, pending, and its number stays taken
    raw = store._datastore.objects["img0"].labels[version.tag].info["emlabel"]
    assert raw["pending"] is True and raw["run"] == run.run_id
    assert (Path(store._datastore_path) / "labels" / version.tag / "img0.nii.gz").is_file()
    later = store.add_version("img0", label_with(2, tmp_path, "b"), correction())
    assert later.tag == "aide-v002" and visible_tags(store, "img0") == {"aide-v002"}
    with pytest.raises(RunClosedError):
        run.add_version("img0", label_with(1, tmp_path, "c"), correction())


def test_a_committed_run_shows_model_versions_and_info_together(store, model_dir, tmp_path):
    model = model_dir / "aide.pt"
    before = model.read_bytes()
    stats = model_dir / "aide.train_stats.json"
    task = StatsTask("t", model)
    with store.begin_run("aide", stats_path=stats) as run:
        task.write_stats({"state": "RUNNING", "epochs": 1})
        checksum = run.stage_checkpoint(
            model, {"w": torch.ones(2)}, {"method": "aide"}, extra={"x": torch.zeros(1)}
        )
        ref = f"aide.pt@sha256:{checksum[:16]}"
        first = run.add_version("img0", label_with(1, tmp_path, "a"), correction(model=ref))
        second = run.add_version(
            "img0", label_with(2, tmp_path, "b"), correction(parent=first.tag, model=ref)
        )
        run.add_version("img1", label_with(1, tmp_path, "c"), correction(model=ref))
        run.update_image_info("img0", {INFO: {"disagreement": 0.5}})
        run.update_image_info("img0", {INFO: {"disagreement": 0.25}, "other": 1})
        task.write_stats({"state": "DONE", "model_sha256": checksum}, run=run)
        # inside the run: nothing is visible yet, to this process or another
        assert model.read_bytes() == before
        assert visible_tags(store, "img0") == set() and store.training_items() == []
        assert task.stats()["state"] == "RUNNING"
        assert journal(store, run.run_id)["state"] == "running"
    assert (first.tag, second.tag) == ("aide-v001", "aide-v002")
    assert file_sha256(model) == checksum
    state, meta = load_checkpoint(model)
    assert torch.equal(state["w"], torch.ones(2)) and meta == {"method": "aide"}
    assert visible_tags(store, "img0") == {"aide-v001", "aide-v002"}
    assert visible_tags(store, "img1") == {"aide-v001"}
    best = store.best_label("img0")
    assert best.tag == "aide-v002" and best.provenance.parent == "aide-v001"
    assert best.provenance.run == run.run_id and best.provenance.pending is False
    assert best.provenance.model == ref
    info = store.get_image_info("img0")
    assert info[INFO] == {"disagreement": 0.25} and info["other"] == 1
    assert task.stats()["state"] == "DONE" and task.stats()["model_sha256"] == checksum
    record = journal(store, run.run_id)
    assert record["state"] == "committed" and "image_info" not in record
    assert record["image_info_images"] == ["img0"]
    assert {f["target"] for f in record["files"]} == {str(model), str(stats)}
    assert staged_files(model_dir) == []
    kept = list((model_dir / "versions").glob("aide-*.pt"))  # models are versions too
    assert [p.read_bytes() for p in kept] == [before]


def test_recovery_aborts_the_running_run_of_a_dead_process(store, model_dir, tmp_path):
    model = model_dir / "aide.pt"
    before = model.read_bytes()
    stats = model_dir / "aide.train_stats.json"
    pid = dead_pid()
    run = store.begin_run("aide", stats_path=stats)
    running_stats(stats, pid=pid)
    run.stage_checkpoint(model, {"w": torch.ones(2)}, {"method": "aide"})
    version = run.add_version("img0", label_with(1, tmp_path, "a"), correction())
    rewrite_journal(store, run.run_id, pid=pid)  # as if that process wrote it, then died
    assert StatsTask("t", model).stats()["state"] == "ABORTED"  # seen at once

    report = store.recover_runs(model_dirs=(model_dir,))
    assert report.aborted == [run.run_id] and report.rolled_forward == []
    assert str(stats) in report.stats_aborted
    assert journal(store, run.run_id)["state"] == "aborted"
    assert f"pid {pid}" in journal(store, run.run_id)["reason"]
    assert model.read_bytes() == before and staged_files(model_dir) == []
    saved = json.loads(stats.read_text())
    assert saved["state"] == "ABORTED" and str(pid) in saved["reason"] and saved["epochs"] == 1
    assert visible_tags(store, "img0") == set()
    assert store._datastore.objects["img0"].labels[version.tag].info["emlabel"]["pending"]
    # a second recovery (the next process) finds nothing to do
    again = store.recover_runs(model_dirs=(model_dir,))
    assert again.aborted == again.rolled_forward == again.stats_aborted == []


def test_recovery_rolls_a_committing_run_forward(store, model_dir, tmp_path, monkeypatch):
    model = model_dir / "aide.pt"
    stats = model_dir / "aide.train_stats.json"
    running_stats(stats)
    run = store.begin_run("aide", stats_path=stats)
    checksum = run.stage_checkpoint(model, {"w": torch.ones(2)}, {"method": "aide"})
    other = model_dir / "other.pt"
    run.stage_checkpoint(other, {"w": torch.full((2,), 3.0)}, {"method": "other"})
    run.add_version("img0", label_with(1, tmp_path, "a"), correction())
    run.update_image_info("img1", {INFO: {"disagreement": 0.1}})
    run.stage_json(stats, {"state": "DONE", "model_sha256": checksum})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while committing")

    monkeypatch.setattr(runs, "finish_commit", killed)
    with pytest.raises(KeyboardInterrupt):
        run.__exit__(None, None, None)
    monkeypatch.undo()
    record = journal(store, run.run_id)
    assert record["state"] == "committing" and record["image_info"]
    # the dead process had renamed the first file already
    first = record["files"][0]
    os.replace(first["staged"], first["target"])
    rewrite_journal(store, run.run_id, pid=dead_pid())
    assert visible_tags(store, "img0") == set()

    report = store.recover_runs(model_dirs=(model_dir,))
    assert report.rolled_forward == [run.run_id] and report.aborted == []
    assert journal(store, run.run_id)["state"] == "committed"
    assert file_sha256(model) == checksum
    assert torch.equal(load_checkpoint(other)[0]["w"], torch.full((2,), 3.0))
    assert json.loads(stats.read_text())["state"] == "DONE"
    assert visible_tags(store, "img0") == {"aide-v001"}
    assert store.get_image_info("img1")[INFO] == {"disagreement": 0.1}
    assert staged_files(model_dir) == []


def test_roll_forward_keeps_a_model_published_after_the_crash(store, model_dir):
    model = model_dir / "aide.pt"
    run = store.begin_run("aide", stats_path=None)
    run.stage_checkpoint(model, {"w": torch.ones(2)}, {"method": "aide"})
    for entry in run._files.values():
        entry.target_before = runs._identity(Path(entry.target))
    run.state = runs.RunState.COMMITTING
    atomic_write_json(run._record() | {"pid": dead_pid()}, run.journal_path)
    newer = publish_checkpoint(model, {"w": torch.full((2,), 7.0)}, {"method": "newer"})
    assert store.recover_runs().rolled_forward == [run.run_id]
    assert file_sha256(model) == newer  # the newer model stays served
    assert staged_files(model_dir) == []
    assert journal(store, run.run_id)["files"][0]["skipped"]


def test_recovery_leaves_runs_of_live_processes_alone(store, model_dir, tmp_path):
    stats = model_dir / "aide.train_stats.json"
    live = store.begin_run("aide", stats_path=stats)
    running_stats(stats)
    live.stage_checkpoint(model_dir / "aide.pt", {"w": torch.ones(2)}, {})
    live.add_version("img0", label_with(1, tmp_path, "a"), correction())

    report = store.recover_runs(model_dirs=(model_dir,))
    assert report.left_running == [live.run_id] and report.aborted == []
    assert journal(store, live.run_id)["state"] == "running"
    assert len(staged_files(model_dir)) == 1
    assert json.loads(stats.read_text())["state"] == "RUNNING"
    assert StatsTask("t", model_dir / "aide.pt").stats()["state"] == "RUNNING"
    # the run goes on and commits normally
    live.__exit__(None, None, None)
    assert visible_tags(store, "img0") == {"aide-v001"}

    # the same pid with another create time is a reused pid: that run is dead
    reused = store.begin_run("stats", stats_path=None)
    rewrite_journal(store, reused.run_id, process_started=reused.process.started - 1000)
    assert store.recover_runs().aborted == [reused.run_id]


def test_temp_files_of_dead_writers_are_removed(store, model_dir):
    captured = []
    atomic_write_with(
        lambda tmp: captured.append(tmp.name) or tmp.write_text("x"), model_dir / "a.pt"
    )
    assert temp_file_pid(captured[0]) == os.getpid()
    assert (
        temp_file_pid("aide.pt") is None and temp_file_pid(".aide.pt.abcdefgh.emlabel-tmp") is None
    )

    dead, live = dead_pid(), os.getpid()
    tmp_dir = Path(store._datastore_path) / ".emlabel-tmp"
    tmp_dir.mkdir(exist_ok=True)
    label_dir = Path(store._datastore_path) / "labels" / "final"
    names = {
        tmp_dir / f".img0.nii.gz.tmp-{dead}-abcd_123.nii.gz": False,
        tmp_dir / f".datastore_v2.json.tmp-{live}-zz99aa00.json": True,
        model_dir / f".aide.pt.tmp-{dead}-q1w2e3r4.pt": False,
        model_dir / f".em_state.json.tmp-{dead}-a1b2c3d4.emlabel-tmp": False,
        model_dir / f".aide.pt.tmp-{live}-q1w2e3r4.pt": True,
        model_dir / ".aide.pt.old_style1.emlabel-tmp": True,  # no pid: cannot tell
        model_dir / ".hidden": True,
        label_dir / f".img1.nii.gz.tmp-{dead}-x1y2z3w4.emlabel-tmp": False,
    }
    for path in names:
        path.write_text("partial")
    report = store.recover_runs(model_dirs=(model_dir,))
    assert sorted(report.temp_files_removed) == sorted(
        str(p) for p, keep in names.items() if not keep
    )
    for path, keep in names.items():
        assert path.exists() == keep, path
