"""``torchrun --nproc_per_node 2`` (gloo, CPU) runs the headless commands as one process
would: DistributedDataParallel training, a sharded E-step, rank 0 alone writing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import torch

from emlabel.checkpoints import load_payload
from emlabel.distributed import sharded_map, world
from emlabel.labels import LabelKind, Provenance
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.runs import FollowerRun
from emlabel.settings import AppSettings
from tests.support.server import TINY_CONF, make_app_dir, server_env

#: 4 training images (2 finals + 2 imported, 1 held out) x min 4 steps of 2: 8 draws per
#: epoch, a multiple of the global batch, so both runs see exactly the same batches
CONF = TINY_CONF | {"min_steps_per_epoch": "4"}


def conf_args() -> list[str]:
    return [arg for key, value in CONF.items() for arg in ("--conf", key, value)]


def folders(template: Path, root: Path) -> list[str]:
    """A private studies + app folder under ``root``; the CLI's folder arguments."""
    shutil.copytree(template, root / "studies")
    app = make_app_dir(root)
    return ["--studies", str(root / "studies"), "--app", str(app), *conf_args()]


def emlabel(args: list[str], *, processes: int = 1, **popen: object) -> subprocess.Popen:
    """``emlabel ARGS`` as its own process, under ``torchrun`` when ``processes`` > 1."""
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={processes}"]  # fmt: skip
    else:
        launcher = [sys.executable]
    # one thread per process, as torchrun's ranks: the same float arithmetic per image
    return subprocess.Popen(
        [*launcher, "-m", "emlabel.cli", *args], env=server_env({"OMP_NUM_THREADS": "1"}),
        encoding="utf-8", errors="replace",  # progress bars are UTF-8 whatever the locale
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen,
    )  # fmt: skip


def finished(args: list[str], *, processes: int = 1, timeout: float = 300) -> str:
    """Run to the end; its output (the test fails with it on a non-zero exit)."""
    proc = emlabel(args, processes=processes)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def weights(root: Path) -> dict[str, torch.Tensor]:
    return load_payload(root / "app" / "model" / "segmentation.pt")["model"]


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[k].float() - b[k].float()).norm() ** 2) for k in a)
    return (num / sum(float(a[k].float().norm() ** 2) for k in a)) ** 0.5


def stored_versions(studies: Path) -> dict[tuple[str, str], tuple[dict, np.ndarray]]:
    """(image, tag) -> (provenance but its run and model, voxels) of every stored label."""
    index = json.loads((studies / "datastore_v2.json").read_text(encoding="utf-8"))
    out = {}
    for image_id, obj in index["objects"].items():
        for tag, label in obj["labels"].items():
            prov = label["info"].get("emlabel", {})
            kept = {k: prov.get(k) for k in ("kind", "source", "iteration", "parent", "reason",
                                             "pending", "scores", "version")}  # fmt: skip
            voxels = np.asarray(nib.load(studies / "labels" / tag / label["info"]["name"]).dataobj)
            out[(image_id, tag)] = (kept, voxels)
    return out


def test_one_process_is_rank_0_of_1_and_a_sharded_map_is_a_map():
    assert world().main and not world().distributed and world().size == 1
    assert sharded_map(lambda x: x * x, [1, 2, 3]) == [1, 4, 9]


def test_a_follower_rank_writes_nothing(tiny_studies, tmp_path):
    datastore = VersionedDatastore(str(tiny_studies), settings=AppSettings())
    before = (tiny_studies / "datastore_v2.json").read_bytes()
    target = tmp_path / "model.pt"
    with FollowerRun(datastore=datastore, method="em", rank=1) as run:
        run.stage_checkpoint(target, {"w": torch.ones(2)}, {"method": "em"})
        label = next(p for p in (tiny_studies / "labels" / "final").iterdir())
        version = run.add_version(
            "case_002", str(label), Provenance(kind=LabelKind.CORRECTED, source="em", version=0)
        )
        run.update_image_info("case_002", {"emlabel.verifier": {"score": 1.0}})
        scratch = run._scratch
        assert scratch is not None and scratch.is_dir()
    assert version.tag.startswith("rank1-unstored")
    assert not target.exists() and not scratch.exists()
    assert (tiny_studies / "datastore_v2.json").read_bytes() == before
    assert not list((tiny_studies / ".emlabel-runs").glob("*.json"))


@pytest.mark.server
def test_two_processes_train_and_run_the_e_step_as_one_does(tiny_demo_template, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train = ["train", "--method", "segmentation", "--option", "max_epochs=2"]
    out_one = finished([*train, *folders(tiny_demo_template, one)])
    out_two = finished([*train, *folders(tiny_demo_template, two)], processes=2)

    # the same model within float tolerance (a different seed differs by ~1.4)
    assert relative_difference(weights(one), weights(two)) < 1e-2
    stats = [json.loads((root / "app/model/segmentation.train_stats.json").read_text())
             for root in (one, two)]  # fmt: skip
    assert [h["val_dice"] for h in stats[0]["history"]] == pytest.approx(
        [h["val_dice"] for h in stats[1]["history"]], abs=1e-3
    )
    assert stats[1]["state"] == "DONE" and len(stats[1]["history"]) == 2
    # rank 0 alone printed the summary and wrote; rank 1 left no scratch behind
    assert out_two.count("model_sha256") == 1 and out_one.count("model_sha256") == 1
    assert "rank1-unstored" not in (two / "studies" / "datastore_v2.json").read_text()

    # one E-step from the same model: the same versions, voxel for voxel
    for name in ("em1", "em2"):
        shutil.copytree(one, tmp_path / name)
    em = ["em", "--iterations", "1", "--option", "epochs=1"]
    base = lambda root: ["--studies", str(root / "studies"), "--app", str(root / "app"),  # noqa: E731
                         *conf_args()]  # fmt: skip
    table_one = finished([*em, *base(tmp_path / "em1")])
    table_two = finished([*em, *base(tmp_path / "em2")], processes=2)
    before = stored_versions(one / "studies")
    after_one = stored_versions(tmp_path / "em1" / "studies")
    after_two = stored_versions(tmp_path / "em2" / "studies")
    assert len(after_one) > len(before)  # the E-step wrote pseudo-labels / corrections
    assert sorted(after_one) == sorted(after_two)
    for key, (provenance, voxels) in after_one.items():
        assert after_two[key][0] == provenance, key
        assert np.array_equal(after_two[key][1], voxels), key
    assert table_two.count("iteration  verified") == 1
    assert table_one.splitlines()[-1] == table_two.splitlines()[-1]  # same decisions


@pytest.mark.server
def test_a_rank_that_dies_fails_the_run_and_nothing_is_written(tiny_demo_template, tmp_path):
    args = folders(tiny_demo_template, tmp_path)
    stats_path = tmp_path / "app" / "model" / "segmentation.train_stats.json"
    proc = emlabel(["train", "--method", "segmentation", "--option", "max_epochs=2000", *args],
                   processes=2)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not stats_path.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.5)
        assert stats_path.exists(), "rank 0 never reported an epoch"
        rank1 = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if p.environ().get("RANK") == "1"]  # fmt: skip
        assert len(rank1) == 1
        rank1[0].kill()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "local_rank: 1" in out or "rank: 1" in out  # torchrun names the failed worker
    model = tmp_path / "app" / "model"
    assert not (model / "segmentation.pt").exists()
    assert not list(model.glob(".*staged*"))
    datastore = VersionedDatastore(str(tmp_path / "studies"), settings=AppSettings())
    datastore.recover_runs(model_dirs=(model,))
    journals = [
        json.loads(p.read_text()) for p in (tmp_path / "studies/.emlabel-runs").glob("*.json")
    ]
    assert [j["state"] for j in journals] == ["aborted"]
    assert json.loads(stats_path.read_text())["state"] == "ABORTED"


@pytest.mark.server
def test_a_method_that_cannot_split_its_work_is_refused_under_torchrun(
    tiny_demo_template, tmp_path
):
    proc = emlabel(["train", "--method", "aide", *folders(tiny_demo_template, tmp_path)],
                   processes=2)  # fmt: skip
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "trainer 'aide' runs in one process only" in out
    assert not list((tmp_path / "app" / "model").glob("aide*"))


@pytest.mark.server
def test_the_server_trains_in_two_processes_when_a_request_asks(tiny_studies, tmp_path):
    from monailabel.client import MONAILabelClient

    from tests.support.server import running_server
    from tests.test_server import status_of, wait_for_training

    with running_server(tiny_studies, tmp_path, conf=CONF) as server:
        client = MONAILabelClient(server_url=server.url, tmpdir=str(tmp_path))
        for bad, reason in (({"processes": 0}, "from 1 to"), ({"processes": 999}, "from 1 to"),
                            ({"processes": "two"}, "integer")):  # fmt: skip
            status, body = status_of(lambda bad=bad: client.train_start("segmentation", bad))
            assert status == 400 and reason in body, body
        status, body = status_of(lambda: client.train_start("aide", {"processes": 2}))
        assert status == 400 and "one process only" in body
        status, body = status_of(lambda: client.train_start("em", {"processes": 2,
                                                                 "learner": "aide"}))  # fmt: skip
        assert status == 400 and "learner 'aide'" in body

        client.train_start("segmentation", {"processes": 2, "max_epochs": 2})
        assert wait_for_training(client).get("status") == "DONE"
        stats = client.info()["train_stats"]["segmentation"]
        assert stats["state"] == "DONE" and stats["processes"] == 2 and stats["epochs"] == 2
        path, _ = client.infer("segmentation", "case_002", {})
        assert nib.load(path).shape == nib.load(tiny_studies / "case_002.nii.gz").shape


def test_the_processes_option_is_bounded_and_needs_a_studies_folder():
    import os

    from emlabel.errors import InvalidRequestError
    from emlabel.monailabel.launch import requested_processes, trainer_options

    assert requested_processes({}) == 1 and requested_processes({"multi_gpu": True}) == 1
    assert requested_processes({"processes": "2"}) == 2
    for bad in (0, -1, (os.cpu_count() or 1) + 1, 1.5, True, "two", [2]):
        with pytest.raises(InvalidRequestError, match="processes"):
            requested_processes({"processes": bad})
    with pytest.raises(InvalidRequestError, match="DICOMweb"):
        requested_processes({"processes": 2}, dicomweb=True)
    assert requested_processes({"processes": 1}, dicomweb=True) == 1
    assert trainer_options({"processes": 2, "max_epochs": 1, "model": "x"}) == {"max_epochs": 1}
