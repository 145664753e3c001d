"""A big volume through the real server: infer's memory stays within the documented bound.

The bound (README, "Real-size scans"): while one infer runs, the server's resident memory
grows by at most 8x the input's float32 size. Inference takes the argmax at the network's
resolution and restores only the label map onto the image grid; restoring all per-class
probabilities at full resolution (the old chain) needs several such copies of
``num_classes`` channels and fails this bound.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time

import nibabel as nib
import numpy as np
import psutil
import pytest
from monailabel.client import MONAILabelClient

from tests.support.server import running_server
from tests.test_server import wait_for_training

pytestmark = pytest.mark.server

BIG_SHAPE = (256, 256, 128)
GROWTH_BOUND = 8.0
"""Largest growth of the server's RSS during one infer, in float32 copies of the input."""


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of ``process`` and all its children."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def write_big_ct(path, rng: np.random.Generator) -> None:
    """A CT-like int16 volume: air, a body ellipsoid, an organ-like blob (0.8 mm voxels)."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in BIG_SHAPE], indexing="ij")
    volume = np.full(BIG_SHAPE, -1000, dtype=np.int16)
    volume[(x / 0.8) ** 2 + (y / 0.6) ** 2 + (z / 1.2) ** 2 < 1] = 40
    volume[((x - 0.3) / 0.3) ** 2 + (y / 0.25) ** 2 + (z / 0.5) ** 2 < 1] = 120
    volume += rng.normal(0, 15, BIG_SHAPE).astype(np.int16)
    affine = np.diag([0.8, 0.8, 1.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), path)


def test_infer_on_a_big_volume_stays_within_the_memory_bound(tiny_demo_template, tmp_path):
    studies = tmp_path / "studies"
    shutil.copytree(tiny_demo_template, studies)
    write_big_ct(studies / "case_big.nii.gz", np.random.default_rng(0))
    input_bytes = int(np.prod(BIG_SHAPE)) * 4
    with running_server(studies, tmp_path) as server:
        client = MONAILabelClient(server_url=server.url, tmpdir=str(tmp_path))
        client.train_start("segmentation", {"max_epochs": 1})
        assert wait_for_training(client)["status"] == "DONE"
        process = psutil.Process(server.process.pid)
        client.infer("segmentation", "case_000", {})  # warm-up: model loaded, caches filled
        time.sleep(1.0)
        before = tree_rss(process)
        peak, done = [before], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss(process))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            path, _ = client.infer("segmentation", "case_big", {})
        finally:
            done.set()
            sampler.join()
        result = nib.load(path)
        assert result.shape == BIG_SHAPE  # on the image's own grid
        assert np.allclose(result.affine, nib.load(studies / "case_big.nii.gz").affine)
        growth = (peak[0] - before) / input_bytes
        assert growth <= GROWTH_BOUND, (
            f"infer grew the server by {growth:.1f}x the float32 input "
            f"({(peak[0] - before) / 2**20:.0f} MiB; bound {GROWTH_BOUND}x)"
        )
