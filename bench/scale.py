"""Real-size CT through the served app: infer time vs the bare network, peak RSS vs the input.

Two cases, each on its own server over its own studies folder (a temp folder, never
committed): ``original`` is ``../shared/data/totalseg/example_ct.nii.gz`` as is (3 mm,
122x101x112); ``fine`` is that CT resampled at run time (SimpleITK, linear) to 0.8 x 0.8 x
1.0 mm (458x379x336, written as int16). Beside the case image the studies hold three small
labeled CTs (``example_ct_sm`` with ``example_seg`` and two 30-slice slabs of
``example_ct`` with ``example_seg_fast_force_split``, labels ``final``); the case image's
own label (force_split, resampled nearest for ``fine``) is imported as ``noisy``. Five
TotalSegmentator structures are served (``labels`` given as name -> stored value).

Per case: train ``segmentation`` 1 epoch (so a model exists), then ``client.infer`` (one
warm-up, then ``--reps`` timed, median) while a thread samples the RSS of the server process
and all its children every 50 ms (peak kept); then, in this process, the same network with
the trained checkpoint, the app's own preprocessing chain, and the app's sliding window on
the preprocessed tensor (``--reps``, median, no grad). Unless ``--skip-train-steps``: one EM
iteration of 1 epoch (``/train/em``) and one AIDE epoch (``/train/aide``), wall time and peak
RSS of the tree. Goals from the issue: served infer <= 1.5x the bare network, peak RSS <= 8x
the input's float32 size (before the fix, on ``fine``: 6.2x and 29x). Every timed step also
records the CPU seconds of the server tree, of this process and of everything else on the
machine (``other_cpu_seconds``), so a timing disturbed by outside load can be recognised.

    .venv/bin/python bench/scale.py [--cases original,fine] [--skip-train-steps]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import psutil
import torch
from monai import transforms as mt
from monailabel.client import MONAILabelClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PROJECT_ROOT, TOTALSEG, format_table, run_header, write_json
from emlabel.checkpoints import load_checkpoint
from emlabel.imports import ImportPlan, import_labels
from emlabel.learners.segmentation import window_inferer
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.nets.app import segmentation_unet
from emlabel.settings import parse_settings, settings_to_dict
from emlabel.transforms import load_and_normalise
from tests.support.server import running_server

CT_FILE = "example_ct.nii.gz"
SEG_FILE = "example_seg_fast_force_split.nii.gz"  # on example_ct's grid (example_seg is not)
CASES = ("original", "fine")
FINE_SPACING = (0.8, 0.8, 1.0)

STRUCTURES = {"liver": 5, "colon": 20, "small_bowel": 18, "spleen": 1, "stomach": 6}
"""TotalSegmentator v2 ids: five of the largest structures of example_ct (others: background)."""

SMALL_SLABS = ((0, 30), (40, 70))
"""Slices of example_ct (and force_split) written as small labeled CTs, beside example_ct_sm
(= example_ct[..., 82:112]) with example_seg."""

SERVER_CONF: dict[str, str] = {
    "labels": json.dumps(STRUCTURES),
    "target_spacing": "1.6,1.6,2.5",
    "roi_size": "64,64,48",
    "network_channels": "16,32,64,128",
    "num_res_units": "1",
    "normalisation": "window",
    "intensity_window": "[-200, 300]",  # a leading "-" would read as an option
    "sw_overlap": "0.25",
    "max_epochs": "1",
    "train_batch_size": "2",
    "seed": "0",
    "num_threads": "0",
}
"""The app defaults (network, roi, spacing), written out so the run is reproducible."""

GOALS = {"served_over_bare": 1.5, "peak_over_input_f32": 8.0}
BEFORE_FIX_FINE = {"served_over_bare": 6.2, "peak_over_input_f32": 29.0}
MB = 2**20
SAMPLE_SECONDS = 0.05


# ------------------------------------------------------------------ memory sampling
def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants (empty when ``pid`` is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(pid: int) -> int:
    """RSS (bytes) of ``pid`` plus all its descendants (processes that vanish are skipped)."""
    procs = process_tree(pid)
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total


class PeakSampler:
    """Context manager: a thread samples :func:`tree_rss` every 50 ms, keeps the peak."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss(self.pid))
            self.samples += 1
            if self._stop.wait(self.interval):
                break

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))


def tree_snapshot(pid: int) -> list[dict[str, Any]]:
    """Each process of the tree: pid, RSS (MB) and the start of its command line."""
    procs = process_tree(pid)
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            cmd = " ".join(proc.cmdline())
            out.append({"pid": proc.pid, "rss_mb": proc.memory_info().rss / MB, "cmd": cmd[:160]})
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid``, its live descendants and its waited children."""
    procs = process_tree(pid)
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = proc.cpu_times()
            total += t.user + t.system + (t.children_user + t.children_system) * (proc is procs[0])
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine spent not idle (all cores, every process)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class CpuMeter:
    """Context manager: CPU seconds of the server tree, this process and everyone else.

    ``other_cpu_seconds`` (machine busy minus both) shows load from outside the benchmark,
    which the 2-core timings cannot separate otherwise.
    """

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.result: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._start = (machine_busy(), tree_cpu(self.server_pid), time.process_time())
        return self

    def __exit__(self, *exc: object) -> None:
        machine, server, own = (
            b - a
            for a, b in zip(
                self._start,
                (machine_busy(), tree_cpu(self.server_pid), time.process_time()),
                strict=True,
            )
        )
        self.result = {
            "server_cpu_seconds": server,
            "bench_cpu_seconds": own,
            "other_cpu_seconds": max(0.0, machine - server - own),
        }


def measured(pid: int, fn: Callable[[], Any]) -> dict[str, Any]:
    """Run ``fn`` with the tree of ``pid`` sampled: seconds, baseline and peak RSS (MB), CPU."""
    baseline = tree_rss(pid)
    with PeakSampler(pid) as sampler, CpuMeter(pid) as cpu:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "baseline_rss_mb": baseline / MB,
        "peak_rss_mb": sampler.peak / MB,
        "samples": sampler.samples,
        **cpu.result,
        "result": result,
    }


# ------------------------------------------------------------------ studies
def write_like(path: Path, array: np.ndarray, like: nib.Nifti1Image, dtype: type) -> None:
    img = nib.Nifti1Image(array.astype(dtype), like.affine)
    img.set_qform(like.affine, code=1)
    img.set_sform(like.affine, code=1)
    nib.save(img, str(path))


def resample_fine(src: Path, dest: Path, *, label: bool) -> None:
    """``src`` resampled to :data:`FINE_SPACING` (same extent); int16 image / uint8 label."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(src))
    size = [
        round(n * s / t)
        for n, s, t in zip(img.GetSize(), img.GetSpacing(), FINE_SPACING, strict=True)
    ]
    out = sitk.Resample(
        img,
        size,
        sitk.Transform(),
        sitk.sitkNearestNeighbor if label else sitk.sitkLinear,
        img.GetOrigin(),
        FINE_SPACING,
        img.GetDirection(),
        0,
        sitk.sitkUInt8 if label else sitk.sitkInt16,
    )
    sitk.WriteImage(out, str(dest), useCompression=True)


def write_studies(studies: Path, case: str) -> tuple[str, Path]:
    """Three small labeled CTs (final) + the case image with its label imported as noisy."""
    final = studies / "labels" / "final"
    final.mkdir(parents=True)
    ct = nib.load(str(TOTALSEG / CT_FILE))
    seg = nib.load(str(TOTALSEG / SEG_FILE))
    shutil.copy(TOTALSEG / "example_ct_sm.nii.gz", studies / "small_ct_sm.nii.gz")
    shutil.copy(TOTALSEG / "example_seg.nii.gz", final / "small_ct_sm.nii.gz")
    for lo, hi in SMALL_SLABS:
        name = f"small_slab_{lo:03d}_{hi:03d}"
        ct_slab, seg_slab = ct.slicer[:, :, lo:hi], seg.slicer[:, :, lo:hi]
        write_like(studies / f"{name}.nii.gz", np.asarray(ct_slab.dataobj), ct_slab, np.int16)
        write_like(final / f"{name}.nii.gz", np.asarray(seg_slab.dataobj), seg_slab, np.uint8)

    image_id = f"ct_{case}"
    image = studies / f"{image_id}.nii.gz"
    noisy = studies.parent / f"{image_id}_label.nii.gz"
    if case == "original":
        shutil.copy(TOTALSEG / CT_FILE, image)  # as is (int32 on disk)
        shutil.copy(TOTALSEG / SEG_FILE, noisy)
    else:
        resample_fine(TOTALSEG / CT_FILE, image, label=False)
        resample_fine(TOTALSEG / SEG_FILE, noisy, label=True)
    datastore = VersionedDatastore(str(studies), settings=parse_settings(SERVER_CONF))
    import_labels(
        datastore, [ImportPlan(image_id=image_id, path=noisy)], tag="noisy", user="bench-scale"
    )
    return image_id, image


# ------------------------------------------------------------------ server steps
def train(client: MONAILabelClient, model: str, params: dict[str, Any], log: Callable[[], str]):
    """Start a training task and wait until it is no longer running; its status must be DONE."""
    client.train_start(model, params)
    while True:
        status = client.train_status()
        if status.get("status") not in ("SUBMITTED", "RUNNING", "QUEUED"):
            break
        time.sleep(0.5)
    if status.get("status") != "DONE":
        raise RuntimeError(f"/train/{model} ended {status.get('status')}:\n{log()[-4000:]}")
    return client.info()["train_stats"].get(model, {})


def served_infer(client: MONAILabelClient, pid: int, image_id: str, shape: tuple, reps: int):
    """One warm-up infer, then ``reps`` timed; each with the server tree's RSS sampled."""
    runs = []
    for rep in range(reps + 1):

        def call() -> tuple[int, ...]:
            path, _ = client.infer("segmentation", image_id, {})
            out_shape = tuple(int(n) for n in nib.load(path).shape)
            os.unlink(path)
            return out_shape

        run = measured(pid, call)
        if run["result"] != shape:
            raise RuntimeError(f"infer returned shape {run['result']}, the image is {shape}")
        run.pop("result")
        run["warmup"] = rep == 0
        runs.append(run)
        print(
            f"  served infer {'warm-up' if rep == 0 else rep}: {run['seconds']:.2f} s, "
            f"peak {run['peak_rss_mb']:.0f} MB, CPU s server {run['server_cpu_seconds']:.1f} "
            f"others {run['other_cpu_seconds']:.1f}",
            flush=True,
        )
    return runs


def bare_network(model_path: Path, image: Path, reps: int, server_pid: int) -> dict[str, Any]:
    """The served network, checkpoint and preprocessing, timed on the app's sliding window
    (with the CPU the idle server and other processes used meanwhile)."""
    settings = parse_settings(SERVER_CONF)
    net = segmentation_unet(settings)
    state, _ = load_checkpoint(model_path)
    net.load_state_dict(state)
    net.eval()
    prepare = mt.Compose(load_and_normalise(settings, ("image",)))
    start = time.perf_counter()
    x = prepare({"image": str(image)})["image"][None]
    preprocess = time.perf_counter() - start
    inferer = window_inferer(settings)
    seconds, peaks, cpu = [], [], []
    baseline = tree_rss(os.getpid())
    with torch.no_grad():
        for rep in range(reps):
            with PeakSampler(os.getpid()) as sampler, CpuMeter(server_pid) as meter:
                start = time.perf_counter()
                out = inferer(x, net)
                seconds.append(time.perf_counter() - start)
            peaks.append(sampler.peak / MB)
            cpu.append(meter.result)
            del out
            print(
                f"  bare sliding window {rep + 1}: {seconds[-1]:.2f} s, CPU s bench "
                f"{meter.result['bench_cpu_seconds']:.1f} server "
                f"{meter.result['server_cpu_seconds']:.1f} others "
                f"{meter.result['other_cpu_seconds']:.1f}",
                flush=True,
            )
    return {
        "cpu": cpu,
        "preprocess_seconds": preprocess,
        "preprocessed_shape": list(x.shape[2:]),
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "torch_threads": torch.get_num_threads(),
        "bench_process_baseline_rss_mb": baseline / MB,
        "bench_process_peak_rss_mb": max(peaks),
    }


def train_step(client, pid, model, params, log, input_mb) -> dict[str, Any]:
    run = measured(pid, lambda: train(client, model, params, log))
    stats = run.pop("result")
    run.update(
        model=model,
        params=params,
        peak_over_input_f32=run["peak_rss_mb"] / input_mb,
        stats={k: v for k, v in stats.items() if k != "history"},
        history=stats.get("history"),
    )
    return run


def run_case(case: str, work: Path, reps: int, train_steps: bool) -> dict[str, Any]:
    studies = work / "studies"
    studies.mkdir(parents=True)
    start = time.perf_counter()
    image_id, image = write_studies(studies, case)
    img = nib.load(str(image))
    shape = tuple(int(n) for n in img.shape)
    voxels = int(np.prod(shape))
    input_mb = voxels * 4 / MB
    out: dict[str, Any] = {
        "image_id": image_id,
        "shape": list(shape),
        "spacing_mm": [float(z) for z in img.header.get_zooms()[:3]],
        "voxels": voxels,
        "input_f32_mb": input_mb,
        "studies_seconds": time.perf_counter() - start,
    }
    print(
        f"{case}: {image_id} {shape} ({input_mb:.0f} MB as float32), studies written in "
        f"{out['studies_seconds']:.1f} s",
        flush=True,
    )
    with running_server(studies, work, conf=SERVER_CONF, timeout=300) as server:
        client = MONAILabelClient(server.url, tmpdir=str(work))
        pid = server.process.pid
        out["server_tree_at_start"] = tree_snapshot(pid)
        start = time.perf_counter()
        seg = train(client, "segmentation", {"max_epochs": 1}, server.log)
        out["segmentation_training"] = {
            "seconds": time.perf_counter() - start,
            "label_sources": seg.get("label_sources"),
        }
        print(
            f"  segmentation trained 1 epoch in {out['segmentation_training']['seconds']:.1f} s",
            flush=True,
        )

        out["server_tree_after_training"] = tree_snapshot(pid)
        runs = served_infer(client, pid, image_id, shape, reps)
        out["server_tree_after_infers"] = tree_snapshot(pid)
        timed = [r for r in runs if not r["warmup"]]
        served = {
            "runs": runs,
            "median_seconds": statistics.median(r["seconds"] for r in timed),
            "baseline_rss_mb": statistics.median(r["baseline_rss_mb"] for r in timed),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in timed),
            "warmup_peak_rss_mb": runs[0]["peak_rss_mb"],
        }
        served["peak_over_input_f32"] = served["peak_rss_mb"] / input_mb
        served["increase_over_input_f32"] = (
            served["peak_rss_mb"] - served["baseline_rss_mb"]
        ) / input_mb
        out["served"] = served
        out["bare"] = bare_network(server.app_dir / "model" / "segmentation.pt", image, reps, pid)
        out["served_over_bare"] = served["median_seconds"] / out["bare"]["median_seconds"]
        out["goals"] = {
            "served_over_bare": {
                "value": out["served_over_bare"],
                "goal": GOALS["served_over_bare"],
                "met": out["served_over_bare"] <= GOALS["served_over_bare"],
            },
            "peak_over_input_f32": {
                "value": served["peak_over_input_f32"],
                "goal": GOALS["peak_over_input_f32"],
                "met": served["peak_over_input_f32"] <= GOALS["peak_over_input_f32"],
            },
        }

        if train_steps:
            out["em"] = train_step(
                client, pid, "em", {"iterations": 1, "epochs": 1}, server.log, input_mb
            )
            print(f"  em 1 iteration x 1 epoch: {out['em']['seconds']:.1f} s", flush=True)
            aide = train_step(client, pid, "aide", {"max_epochs": 1}, server.log, input_mb)
            images = (aide["stats"].get("data") or {}).get("images") or 0
            aide["images"] = images
            aide["seconds_per_image"] = aide["seconds"] / images if images else None
            out["aide"] = aide
            print(f"  aide 1 epoch: {aide['seconds']:.1f} s over {images} images", flush=True)
    return out


# ------------------------------------------------------------------ report
def uncommitted_files() -> list[str] | None:
    """``git status --short`` of the code this run used (the commit alone may not be it)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--short", "--", "lib", "apps", "bench"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.splitlines()


def report(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for case, r in results.items():
        s, b = r["served"], r["bare"]
        rows.append(
            [
                case,
                "x".join(map(str, r["shape"])),
                f"{r['input_f32_mb']:.0f}",
                "x".join(map(str, b["preprocessed_shape"])),
                f"{s['median_seconds']:.2f}",
                f"{b['median_seconds']:.2f}",
                f"{r['served_over_bare']:.2f}",
                f"{s['baseline_rss_mb']:.0f}",
                f"{s['peak_rss_mb']:.0f}",
                f"{s['peak_over_input_f32']:.1f}",
                f"{s['increase_over_input_f32']:.1f}",
            ]
        )
    text = format_table(
        [
            "case",
            "input",
            "f32 MB",
            "network grid",
            "served s",
            "bare s",
            "served/bare",
            "base RSS MB",
            "peak RSS MB",
            "peak/f32",
            "(peak-base)/f32",
        ],
        rows,
    )
    steps = []
    for case, r in results.items():
        for name in ("em", "aide"):
            if name in r:
                t = r[name]
                per_image = t.get("seconds_per_image")
                steps.append(
                    [
                        case,
                        name,
                        json.dumps(t["params"]),
                        f"{t['seconds']:.1f}",
                        f"{t['peak_rss_mb']:.0f}",
                        f"{t['peak_over_input_f32']:.1f}",
                        "-" if per_image is None else f"{per_image:.1f}",
                    ]
                )
    if steps:
        text += "\n\n" + format_table(
            ["case", "train", "request", "wall s", "peak RSS MB", "peak/f32", "s per image"],
            steps,
        )
    lines = []
    for case, r in results.items():
        g = r["goals"]
        lines.append(
            f"{case}: served infer {g['served_over_bare']['value']:.2f}x the bare network "
            f"(goal <= {GOALS['served_over_bare']}: "
            f"{'met' if g['served_over_bare']['met'] else 'NOT met'}); peak RSS "
            f"{g['peak_over_input_f32']['value']:.1f}x the float32 input (goal <= "
            f"{GOALS['peak_over_input_f32']:.0f}: "
            f"{'met' if g['peak_over_input_f32']['met'] else 'NOT met'})"
        )
    return text + "\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: original,fine")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument(
        "--skip-train-steps", action="store_true", help="no EM iteration / AIDE epoch"
    )
    parser.add_argument(
        "--out",
        default=str(PROJECT_ROOT / "bench" / "results" / "scale"),
        help="writes OUT.json and OUT.txt",
    )
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or any(c not in CASES for c in cases):
        parser.error(f"--cases takes a comma-separated subset of {','.join(CASES)}")
    print("server --conf:", " ".join(f"{k}={v}" for k, v in SERVER_CONF.items()), flush=True)

    header = run_header()
    wall = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for case in cases:
        work = Path(tempfile.mkdtemp(prefix=f"emlabel-bench-scale-{case}-"))
        try:
            results[case] = run_case(case, work, args.reps, not args.skip_train_steps)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    text = report(results)
    print(text)
    out = Path(args.out)
    write_json(
        out.with_suffix(".json"),
        header
        | {
            "wall_seconds": time.perf_counter() - wall,
            "uncommitted_files": uncommitted_files(),
            "server_conf": SERVER_CONF,
            "settings": settings_to_dict(parse_settings(SERVER_CONF)),
            "structures": STRUCTURES,
            "data": {
                "ct": str(TOTALSEG / CT_FILE),
                "label": str(TOTALSEG / SEG_FILE),
                "fine_spacing_mm": FINE_SPACING,
                "small_labeled": [
                    "example_ct_sm + example_seg",
                    *(f"example_ct[..., {lo}:{hi}]" for lo, hi in SMALL_SLABS),
                ],
                "case_label": "force_split imported as 'noisy' (nearest-resampled for fine)",
            },
            "rss": "sum of RSS over the server process and all its descendants, sampled "
            f"every {SAMPLE_SECONDS * 1000:.0f} ms (psutil); peak = max over the timed infers",
            "goals": GOALS,
            "before_fix_fine": BEFORE_FIX_FINE,
            "cases": results,
        },
    )
    out.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
