"""Benchmark: CGS (generalist + specialists) vs the same mean-teacher frame without specialists
vs supervised only, on multi-target CT with small and large structures.

Data (``/work/shared/data/totalseg``): axial 2D slices of ``example_ct.nii.gz`` (3 mm
isotropic, 122x101x112) with the TotalSegmentator label map that covers all 112 of its slices,
``example_seg_fast_force_split.nii.gz`` (``example_seg.nii.gz`` only covers slices 82..111,
i.e. ``example_ct_sm``). Nine abdominal structures from the adrenal glands (166 voxels) to the
liver (41,692 voxels); every other label is background. CT windowed [-200, 300] HU -> [0, 1];
slices cropped (no resampling, native 3 mm pixels) to the 96x96 window that holds every chosen
structure. Every 3rd slice is a test slice (never trained on, empty slices included); of the
remaining pool 10% of the slices are labeled (a random draw per seed, redrawn until every
structure appears in at least one labeled slice and at least one labeled slice is empty) and
the rest are the unlabeled set.

``--dataset phantoms``: axial 64x64 slices of the demo's synthetic CT phantoms
(``emlabel.data.phantoms``, 1.6 mm pixels): the slices of 10 phantoms form the pool, those of
4 other phantoms the test set; six structures from the liver (~20,000 voxels per volume) to an
adrenal (~100), with a liver lesion (~580) that a network can learn from 48 labeled slices.

Methods (same trunk = MONAI BasicUNet via ``build_cgs_net``; same initial trunk weights, same
SGD + poly schedule, same iterations, same labeled batch, same weak-view augmentation; each
evaluated through its EMA teacher's generalist head):

1. ``supervised``: plain U-Net (``CGSNet.generalist_only()`` of the shared init, i.e.
   ``build_plain_unet``) trained by a local loop on the labeled slices with the frame's
   supervised generalist loss (masked CE + Dice, ``supervised_loss(gen, None, y)``), weak
   views, SGD/poly and an EMA teacher (library ``ema_update``) like the frames;
2. ``mean_teacher``: ``CGSTrainer(use_specialists=False)``;
3. ``cgs``: ``CGSTrainer(use_specialists=True)``.

Also: parameters of the served model (``serving_model()`` = teacher ``generalist_only()``) vs
the plain U-Net, and CPU inference time of both measured in this run (interleaved passes).

Run ``nice -n 10 .venv/bin/python bench/cgs.py [--quick] [--out PATH]`` from the project root.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PROJECT_ROOT,
    format_p,
    format_table,
    machine_facts,
    paired_wilcoxon,
    run_header,
    summarize,
    write_json,
)

from emlabel.data.phantoms import PHANTOM_LABELS, PhantomOptions, make_phantom
from emlabel.methods.cgs import (
    CGSOptions,
    CGSTrainer,
    ema_update,
    make_teacher,
    supervised_loss,
    weak_view,
)
from emlabel.metrics import dice
from emlabel.nets import count_parameters
from emlabel.nets.cgs import build_cgs_net, build_plain_unet

TOTALSEG = PROJECT_ROOT.parent / "shared" / "data" / "totalseg"
CT_FILE = "example_ct.nii.gz"
SEG_FILE = "example_seg_fast_force_split.nii.gz"

STRUCTURES: tuple[tuple[str, int], ...] = (
    # TotalSegmentator v2 "total" class ids.
    ("liver", 5),
    ("spleen", 1),
    ("kidney_right", 2),
    ("kidney_left", 3),
    ("aorta", 52),
    ("gallbladder", 4),
    ("pancreas", 7),
    ("adrenal_gland_left", 9),
    ("adrenal_gland_right", 8),
)
DATASETS = ("totalseg", "phantoms")
DATASET_NOTES = {
    "totalseg": f"{CT_FILE} + {SEG_FILE} (TotalSegmentator model output = pseudo ground truth). "
    "example_seg.nii.gz covers only 30 slices (= example_ct[..., 82:112]) so the full-volume "
    "label map of the same CT is used; axial slices cropped (no resampling) to 96x96 native "
    "3 mm pixels",
    "phantoms": "the demo's synthetic CT phantoms (emlabel.data.phantoms, 64x64x48 at "
    "1.6x1.6x2.5 mm, 6 structures from the liver (~10% of the volume) to an adrenal "
    "(~0.05%)); axial 64x64 slices, held-out phantoms as the test set",
}
METHODS = ("supervised", "mean_teacher", "cgs")
METHOD_TITLES = {
    "supervised": "supervised",
    "mean_teacher": "MT (no spec.)",
    "cgs": "CGS",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of a run (stored in the JSON)."""

    window_hu: tuple[float, float] = (-200.0, 300.0)
    crop_x: tuple[int, int] = (9, 105)
    """Crop of the first (R->L) axis: holds every chosen structure (x 10..104)."""
    crop_y: tuple[int, int] = (0, 96)
    """Crop of the second (P->A) axis: the body spans y 0..96."""
    test_every: int = 3
    test_offset: int = 1
    labeled_fraction: float = 0.10
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    feature_channels: int = 16
    iterations: int = 1000
    labeled_batch_size: int = 4
    unlabeled_batch_size: int = 4
    learning_rate: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    tau: float = 0.95
    lambda_max: float = 0.1
    ema_decay_max: float = 0.99
    rotation_degrees: float = 20.0
    jitter_strength: float = 0.2
    cutmix_area: tuple[float, float] = (0.02, 0.4)
    timing_repeats: int = 20
    timing_batch: int = 1
    threads: int = 2
    """torch threads of the inference timing."""
    train_threads: int = 1
    """torch threads per training process (1: tiny element-wise ops of the losses scale badly
    with threads, and with ``jobs`` = 2 both cores are busy)."""
    jobs: int = 2
    """Seeds trained in parallel worker processes (each with ``train_threads``)."""
    history_every: int = 25
    confident_masks: bool = False
    """CGSOptions.confident_masks (our addition)."""
    dataset: str = "totalseg"
    """"totalseg" (one real CT, 3 mm) or "phantoms" (the demo's synthetic CT volumes)."""
    phantom_pool_volumes: int = 10
    """Phantoms whose slices form the pool (labeled + unlabeled)."""
    phantom_test_volumes: int = 4
    """Held-out phantoms whose slices are the test set."""
    phantom_seed: int = 7000
    """Seed of the first phantom (the others follow)."""

    def cgs_options(self, seed: int) -> CGSOptions:
        return CGSOptions(
            tau=self.tau,
            confident_masks=self.confident_masks,
            ema_decay_max=self.ema_decay_max,
            lambda_max=self.lambda_max,
            cutmix_area=self.cutmix_area,
            learning_rate=self.learning_rate,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            poly_power=self.poly_power,
            max_iterations=self.iterations,
            labeled_batch_size=self.labeled_batch_size,
            unlabeled_batch_size=self.unlabeled_batch_size,
            seed=seed,
            rotation_degrees=self.rotation_degrees,
            jitter_strength=self.jitter_strength,
        )


def quick_settings(s: Settings) -> Settings:
    """A tiny configuration (a minute or two) for development."""
    return dataclasses.replace(
        s, iterations=12, channels=(8, 16, 32, 64, 128), timing_repeats=5, history_every=4
    )


# --------------------------------------------------------------------------- data


def load_data(s: Settings) -> dict[str, Any]:
    """The benchmark's slices of ``s.dataset`` (see :func:`load_totalseg`)."""
    if s.dataset == "phantoms":
        return load_phantoms(s)
    if s.dataset == "totalseg":
        return load_totalseg(s)
    raise ValueError(f"unknown dataset {s.dataset!r}: choose from {DATASETS}")


def load_phantoms(s: Settings) -> dict[str, Any]:
    """Axial slices of demo phantoms (64x64 at 1.6 mm): pool phantoms then test phantoms.

    Same keys as :func:`load_totalseg`; the test slices are every slice of the held-out
    phantoms, the pool every slice of the others (empty slices included in both).
    """
    lo, hi = s.window_hu
    n_volumes = s.phantom_pool_volumes + s.phantom_test_volumes
    images, labels = [], []
    for i in range(n_volumes):
        ph = make_phantom(seed=s.phantom_seed + i)
        image = (np.clip(ph.image, lo, hi) - lo) / (hi - lo)
        images.append(image.transpose(2, 0, 1))  # [X, Y, Z] -> [Z, X, Y]
        labels.append(ph.label.astype(np.int64).transpose(2, 0, 1))
    depth = images[0].shape[0]
    image_t = torch.from_numpy(np.ascontiguousarray(np.concatenate(images)))[:, None].float()
    label_t = torch.from_numpy(np.ascontiguousarray(np.concatenate(labels))).long()
    names = PHANTOM_LABELS[1:]
    n_pool = s.phantom_pool_volumes * depth
    return {
        "images": image_t,
        "labels": label_t,
        "names": names,
        "volume_voxels": {
            n: round(int((label_t == k).sum()) / n_volumes) for k, n in enumerate(names, 1)
        },
        "test_z": list(range(n_pool, n_volumes * depth)),
        "pool_z": list(range(n_pool)),
        "voxels_lost_by_crop": {},
        "spacing_mm": list(PhantomOptions().spacing),
        "shape": list(PhantomOptions().shape),
        "source": f"make_phantom(seed={s.phantom_seed}..{s.phantom_seed + n_volumes - 1})",
        "split": f"test = every slice of the last {s.phantom_test_volumes} phantoms; pool = "
        f"every slice of the first {s.phantom_pool_volumes}",
        "voxels_note": "mean voxels per phantom volume",
        "class_ids": {n: k for k, n in enumerate(names, 1)},
    }


def load_totalseg(s: Settings) -> dict[str, Any]:
    """Windowed slices ``[Z, 1, 96, 96]`` (float32) and class maps ``[Z, 96, 96]`` (0..K)."""
    ct_img = nib.load(str(TOTALSEG / CT_FILE))
    seg_img = nib.load(str(TOTALSEG / SEG_FILE))
    if ct_img.shape != seg_img.shape or not np.allclose(ct_img.affine, seg_img.affine):
        raise RuntimeError(f"{CT_FILE} and {SEG_FILE} are not on the same grid")
    ct = np.asarray(ct_img.dataobj, dtype=np.float32)
    seg = np.asarray(seg_img.dataobj).astype(np.int64)
    lo, hi = s.window_hu
    image = (np.clip(ct, lo, hi) - lo) / (hi - lo)
    label = np.zeros_like(seg)
    volume_counts = {}
    for k, (name, ts_id) in enumerate(STRUCTURES, start=1):
        label[seg == ts_id] = k
        volume_counts[name] = int(np.count_nonzero(seg == ts_id))
    (x0, x1), (y0, y1) = s.crop_x, s.crop_y
    image, label = image[x0:x1, y0:y1], label[x0:x1, y0:y1]
    crop_counts = {
        name: int(np.count_nonzero(label == k)) for k, (name, _) in enumerate(STRUCTURES, 1)
    }
    lost = {
        n: volume_counts[n] - crop_counts[n]
        for n in volume_counts
        if crop_counts[n] != volume_counts[n]
    }
    # axial slices: [X, Y, Z] -> [Z, 1, X, Y]
    images = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[:, None]
    labels = torch.from_numpy(np.ascontiguousarray(label.transpose(2, 0, 1)))
    test_z, pool_z = split_slices(images.shape[0], s)
    return {
        "images": images.float(),
        "labels": labels.long(),
        "names": tuple(name for name, _ in STRUCTURES),
        "volume_voxels": volume_counts,
        "test_z": test_z,
        "pool_z": pool_z,
        "source": f"{TOTALSEG / CT_FILE} + {TOTALSEG / SEG_FILE}",
        "split": f"test = slices with z % {s.test_every} == {s.test_offset} (fixed); pool = "
        "the rest",
        "voxels_note": "voxels in the volume",
        "class_ids": {name: ts_id for name, ts_id in STRUCTURES},
        "crop_voxels": crop_counts,
        "voxels_lost_by_crop": lost,
        "spacing_mm": [float(v) for v in ct_img.header.get_zooms()],
        "shape": list(ct_img.shape),
    }


def split_slices(n_slices: int, s: Settings) -> tuple[list[int], list[int]]:
    """(test slices, pool slices): every ``test_every``-th slice is a test slice."""
    test = [z for z in range(n_slices) if z % s.test_every == s.test_offset]
    pool = [z for z in range(n_slices) if z % s.test_every != s.test_offset]
    return test, pool


def draw_labeled(
    labels: torch.Tensor, pool: Sequence[int], fraction: float, seed: int, k: int
) -> tuple[list[int], int]:
    """A random ``fraction`` of ``pool`` covering every class and (if the pool has one) an
    empty slice; (slices, number of draws needed)."""
    n = max(1, math.ceil(fraction * len(pool)))
    present = {z: set(torch.unique(labels[z]).tolist()) - {0} for z in pool}
    pool_has_empty = any(not classes for classes in present.values())
    rng = np.random.default_rng(10_000 + seed)
    for draw in range(1, 100_001):
        chosen = sorted(int(z) for z in rng.choice(pool, size=n, replace=False))
        covered = set().union(*(present[z] for z in chosen))
        has_empty = any(not present[z] for z in chosen)
        if len(covered) == k and (has_empty or not pool_has_empty):
            return chosen, draw
    raise RuntimeError("could not draw a labeled set that covers every structure")


# --------------------------------------------------------------------------- training


def poly_lr(s: Settings, iteration: int) -> float:
    return s.learning_rate * max(1.0 - iteration / s.iterations, 0.0) ** s.poly_power


def train_supervised(
    init: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    s: Settings,
    seed: int,
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Plain U-Net, labeled slices only: the frame's supervised generalist loss, weak views,
    SGD + poly, EMA teacher (returned, like the frames' teachers)."""
    student = init
    student.train()
    teacher = make_teacher(student)
    opt = torch.optim.SGD(
        student.parameters(),
        lr=s.learning_rate,
        momentum=s.momentum,
        weight_decay=s.weight_decay,
    )
    gen = torch.Generator().manual_seed(seed)
    history = []
    n = images.shape[0]
    for it in range(s.iterations):
        if n >= s.labeled_batch_size:
            idx = torch.randperm(n, generator=gen)[: s.labeled_batch_size]
        else:
            idx = torch.randint(n, (s.labeled_batch_size,), generator=gen)
        x, y = weak_view(
            images[idx], labels[idx], generator=gen, rotation_degrees=s.rotation_degrees
        )
        assert y is not None
        student.train()
        loss, _ = supervised_loss(student(x), None, y)
        lr = poly_lr(s, it)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(teacher, student, it + 1, s.ema_decay_max)
        if it % s.history_every == 0 or it == s.iterations - 1:
            history.append({"iteration": it, "loss": loss.item(), "lr": lr})
    return teacher.eval(), history


def train_frame(
    init: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    unlabeled: torch.Tensor,
    s: Settings,
    seed: int,
    use_specialists: bool,
) -> tuple[CGSTrainer, list[dict[str, float]]]:
    trainer = CGSTrainer(init, s.cgs_options(seed), use_specialists=use_specialists)
    run = trainer.fit(images, labels, unlabeled)
    history = [
        st
        for st in run
        if int(st["iteration"]) % s.history_every == 0 or int(st["iteration"]) == s.iterations - 1
    ]
    return trainer, history


def tail_mean(run: Sequence[dict[str, float]], key: str, fraction: float = 0.1) -> float | None:
    vals = [st[key] for st in run if key in st]
    if not vals:
        return None
    tail = vals[-max(1, int(len(vals) * fraction)) :]
    return float(np.mean(tail))


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])


def evaluate(
    pred: torch.Tensor, ref: torch.Tensor, test_z: Sequence[int], names: Sequence[str]
) -> dict[str, Any]:
    """Pooled per-class Dice over all test slices (2TP / (|P| + |R|) summed over slices) and
    per-slice per-class Dice (1.0 when both are empty, as ``emlabel.metrics.dice``)."""
    p, r = pred.numpy(), ref.numpy()
    pooled, per_slice = {}, []
    for k, name in enumerate(names, start=1):
        pk, rk = p == k, r == k
        pooled[name] = dice(pk, rk)
    for i, z in enumerate(test_z):
        row: dict[str, Any] = {"z": int(z)}
        for k, name in enumerate(names, start=1):
            row[name] = dice(p[i] == k, r[i] == k)
            row[f"{name}_ref_px"] = int(np.count_nonzero(r[i] == k))
            row[f"{name}_pred_px"] = int(np.count_nonzero(p[i] == k))
        per_slice.append(row)
    # per-slice Dice averaged over the slices where the structure is in the reference
    present_mean = {}
    for name in names:
        vals = [row[name] for row in per_slice if row[f"{name}_ref_px"] > 0]
        present_mean[name] = float(np.mean(vals)) if vals else math.nan
    fp_slices = {
        name: sum(
            1 for row in per_slice if row[f"{name}_ref_px"] == 0 and row[f"{name}_pred_px"] > 0
        )
        for name in names
    }
    return {
        "pooled_dice": pooled,
        "present_slice_mean_dice": present_mean,
        "false_positive_slices": fp_slices,
        "per_slice": per_slice,
    }


# --------------------------------------------------------------------------- inference cost


def total_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def time_inference(
    models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int
) -> dict[str, Any]:
    """Interleaved timed forward passes (3 warm-up rounds); median, IQR in ms."""
    for m in models.values():
        m.eval()
    times: dict[str, list[float]] = {name: [] for name in models}
    for rnd in range(repeats + 3):
        for name, m in models.items():
            start = time.perf_counter()
            m(x)
            dt = time.perf_counter() - start
            if rnd >= 3:
                times[name].append(dt * 1000)
    return {
        name: {
            "median_ms": float(np.median(v)),
            "q25_ms": float(np.percentile(v, 25)),
            "q75_ms": float(np.percentile(v, 75)),
            "all_ms": v,
        }
        for name, v in times.items()
    }


class _ForwardAll(torch.nn.Module):
    """CGSNet.forward_all as a module (training-time cost with every head)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> Any:
        return self.net.forward_all(x)


# --------------------------------------------------------------------------- main


def small_third(data: dict[str, Any]) -> list[str]:
    order = sorted(data["volume_voxels"], key=data["volume_voxels"].get)
    return order[: max(1, len(order) // 3)]


def class_slices(labels: torch.Tensor, zs: Sequence[int], names: Sequence[str]) -> dict[str, int]:
    """Number of slices of ``zs`` holding each structure."""
    return {
        name: int(sum(bool((labels[z] == k).any()) for z in zs)) for k, name in enumerate(names, 1)
    }


def run_seed(
    seed: int, s: Settings, methods: Sequence[str]
) -> tuple[dict[str, Any], torch.nn.Module | None]:
    """Train and evaluate every method for one seed (runs in a worker process when the seeds
    run in parallel); returns the seed's results and the last frame's served model."""
    torch.set_num_threads(s.train_threads)
    data = load_data(s)
    images, labels, names = data["images"], data["labels"], data["names"]
    test_z, pool_z = data["test_z"], data["pool_z"]
    test_x, test_y = images[test_z], labels[test_z]
    small = small_third(data)
    names_by_size = sorted(data["volume_voxels"], key=data["volume_voxels"].get)
    num_classes = len(names) + 1
    served: torch.nn.Module | None = None
    labeled_z, draws = draw_labeled(labels, pool_z, s.labeled_fraction, seed, len(names))
    unlabeled_z = [z for z in pool_z if z not in labeled_z]
    lx, ly, ux = images[labeled_z], labels[labeled_z], images[unlabeled_z]
    print(f"seed {seed}: labeled slices {labeled_z} ({draws} draws)", flush=True)
    torch.manual_seed(seed)
    init = build_cgs_net(
        spatial_dims=2,
        num_classes=num_classes,
        channels=s.channels,
        feature_channels=s.feature_channels,
    )
    seed_runs: dict[str, Any] = {
        "labeled_slices": labeled_z,
        "labeled_draws": draws,
        "n_unlabeled": len(unlabeled_z),
        "labeled_slices_per_structure": class_slices(labels, labeled_z, names),
        "labeled_voxels_per_structure": {
            name: int((ly == k).sum()) for k, name in enumerate(names, 1)
        },
        "methods": {},
    }
    for method in methods:
        t0 = time.perf_counter()
        c0 = time.process_time()
        net = init.generalist_only() if method == "supervised" else copy.deepcopy(init)
        torch.manual_seed(seed)
        extra: dict[str, Any] = {}
        if method == "supervised":
            model, history = train_supervised(net, lx, ly, s, seed)
        else:
            trainer, history = train_frame(
                net, lx, ly, ux, s, seed, use_specialists=(method == "cgs")
            )
            model = trainer.serving_model()
            served = model  # the last frame's served model (CGS of the last seed)
            extra["final_mask_fractions"] = {
                key: tail_mean(trainer.history, key) for key in ("mask_g", "mask_s", "mask_e")
            }
            with torch.no_grad():
                diff = (trainer.teacher(test_x[:4]) - model(test_x[:4])).abs().max().item()
            extra["serving_vs_teacher_max_abs_diff"] = diff
        train_s = time.perf_counter() - t0
        train_cpu = time.process_time() - c0
        pred = predict(model, test_x)
        ev = evaluate(pred, test_y, test_z, names)
        seed_runs["methods"][method] = {
            "train_wall_s": train_s,
            "train_cpu_s": train_cpu,
            "s_per_iteration": train_s / s.iterations,
            "cpu_s_per_iteration": train_cpu / s.iterations,
            **extra,
            **ev,
            "history": history,
        }
        pooled = ev["pooled_dice"]
        print(
            f"  seed {seed} {method:13s} {train_s:7.1f} s  small-third "
            f"{np.mean([pooled[n] for n in small]):.3f}  all "
            f"{np.mean(list(pooled.values())):.3f}  "
            + " ".join(f"{_short(n)}={pooled[n]:.2f}" for n in names_by_size),
            flush=True,
        )
    return seed_runs, served


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (/proc), so imports are counted too."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny run for development")
    p.add_argument(
        "--confident-masks",
        action="store_true",
        help="CGS: M_s and M_e also need confident heads (our addition)",
    )
    p.add_argument(
        "--dataset", choices=DATASETS, default="totalseg", help="slices to train and test on"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default bench/results/cgs.json)"
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1)"
    )
    p.add_argument("--iterations", type=int, default=None, help="training iterations per method")
    p.add_argument("--lr", type=float, default=None, help="initial SGD learning rate")
    p.add_argument(
        "--labeled-fraction", type=float, default=None, help="share of pool slices labeled"
    )
    p.add_argument(
        "--channels", type=int, nargs=5, default=None, help="the five U-Net encoder widths"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=None,
        help="subset of methods (development; the full comparison needs all three)",
    )
    p.add_argument(
        "--train-threads",
        type=int,
        default=None,
        help="torch threads per training process (default 1; inference is timed with 2)",
    )
    p.add_argument(
        "--jobs", type=int, default=None, help="seeds trained in parallel processes (default 2)"
    )
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    header = run_header()
    s = Settings()
    if args.quick:
        s = quick_settings(s)
    s = dataclasses.replace(s, dataset=args.dataset, confident_masks=args.confident_masks)
    if args.iterations is not None:
        s = dataclasses.replace(s, iterations=args.iterations)
    if args.lr is not None:
        s = dataclasses.replace(s, learning_rate=args.lr)
    if args.labeled_fraction is not None:
        s = dataclasses.replace(s, labeled_fraction=args.labeled_fraction)
    if args.channels is not None:
        s = dataclasses.replace(s, channels=tuple(args.channels))
    if args.train_threads is not None:
        s = dataclasses.replace(s, train_threads=args.train_threads)
    if args.jobs is not None:
        s = dataclasses.replace(s, jobs=args.jobs)
    methods = tuple(args.methods) if args.methods else METHODS
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1])
    out = args.out or PROJECT_ROOT / "bench" / "results" / "cgs.json"

    wall: dict[str, float] = {}
    t0 = time.perf_counter()
    data = load_data(s)
    images, labels, names = data["images"], data["labels"], data["names"]
    test_z, pool_z = data["test_z"], data["pool_z"]
    wall["load_data_s"] = time.perf_counter() - t0
    small = small_third(data)
    names_by_size = sorted(data["volume_voxels"], key=data["volume_voxels"].get)
    num_classes = len(names) + 1

    empty_test = [z for z in test_z if not bool(labels[z].any())]
    print(f"{len(test_z)} test slices ({len(empty_test)} empty), pool {len(pool_z)}", flush=True)
    print(
        f"structures ({data['voxels_note']}): "
        + ", ".join(f"{n} {data['volume_voxels'][n]}" for n in names_by_size),
        flush=True,
    )

    test_x, test_y = images[test_z], labels[test_z]
    t0 = time.perf_counter()
    jobs = max(1, min(s.jobs, len(seeds)))
    if jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            results = list(pool.map(run_seed, seeds, [s] * len(seeds), [methods] * len(seeds)))
    else:
        results = [run_seed(seed, s, methods) for seed in seeds]
    runs: dict[str, dict[str, Any]] = {
        str(sd): r for sd, (r, _) in zip(seeds, results, strict=True)
    }
    served = results[-1][1]
    wall["training_s"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- inference cost
    t0 = time.perf_counter()
    torch.set_num_threads(s.threads)
    if served is None:  # development runs without a frame: an untrained CGS net's head
        served = build_cgs_net(
            spatial_dims=2,
            num_classes=num_classes,
            channels=s.channels,
            feature_channels=s.feature_channels,
        ).generalist_only()
    plain = build_plain_unet(
        spatial_dims=2,
        num_classes=num_classes,
        channels=s.channels,
        feature_channels=s.feature_channels,
    )
    full = build_cgs_net(
        spatial_dims=2,
        num_classes=num_classes,
        channels=s.channels,
        feature_channels=s.feature_channels,
    )
    same_arch = {k: tuple(v.shape) for k, v in served.state_dict().items()} == {
        k: tuple(v.shape) for k, v in plain.state_dict().items()
    }
    params = {
        "served_generalist_only": total_parameters(served),
        "plain_unet": total_parameters(plain),
        "cgs_net_with_specialists": total_parameters(full),
        "served_count_parameters_library": count_parameters(served),
        "plain_count_parameters_library": count_parameters(plain),
        "served_same_architecture_as_plain": same_arch,
        "served_class": type(served).__name__,
        "plain_class": type(plain).__name__,
    }
    x = test_x[: s.timing_batch].contiguous()
    timed_models = {"plain_unet": plain, "served": served, "cgs_forward_all": _ForwardAll(full)}
    timing = time_inference(timed_models, x, s.timing_repeats)
    ratio = timing["served"]["median_ms"] / timing["plain_unet"]["median_ms"]
    ratio_all = timing["cgs_forward_all"]["median_ms"] / timing["plain_unet"]["median_ms"]
    # secondary: one thread (less sensitive to other processes on the machine)
    torch.set_num_threads(1)
    timing_1t = time_inference(timed_models, x, s.timing_repeats)
    ratio_1t = timing_1t["served"]["median_ms"] / timing_1t["plain_unet"]["median_ms"]
    wall["inference_timing_s"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- summary
    summary: dict[str, Any] = {"per_class_pooled_dice": {}, "small_third": small}
    for method in methods:
        per_class = {
            name: summarize([runs[str(sd)]["methods"][method]["pooled_dice"][name] for sd in seeds])
            for name in names_by_size
        }
        small_vals = [
            float(np.mean([runs[str(sd)]["methods"][method]["pooled_dice"][n] for n in small]))
            for sd in seeds
        ]
        all_vals = [
            float(np.mean(list(runs[str(sd)]["methods"][method]["pooled_dice"].values())))
            for sd in seeds
        ]
        present_vals = {
            name: summarize(
                [runs[str(sd)]["methods"][method]["present_slice_mean_dice"][name] for sd in seeds]
            )
            for name in names_by_size
        }
        summary["per_class_pooled_dice"][method] = {
            "per_class": per_class,
            "per_class_present_slice_mean": present_vals,
            "small_third_mean": summarize(small_vals),
            "all_mean": summarize(all_vals),
            "train_wall_s": summarize(
                [runs[str(sd)]["methods"][method]["train_wall_s"] for sd in seeds]
            ),
            "train_cpu_s": summarize(
                [runs[str(sd)]["methods"][method]["train_cpu_s"] for sd in seeds]
            ),
        }

    def slice_small_third(method: str) -> list[float]:
        """Per test slice: mean over the smallest third of per-slice Dice, averaged over seeds."""
        out = []
        for i in range(len(test_z)):
            vals = [
                np.mean([runs[str(sd)]["methods"][method]["per_slice"][i][n] for n in small])
                for sd in seeds
            ]
            out.append(float(np.mean(vals)))
        return out

    per_slice_small = {m: slice_small_third(m) for m in methods}
    tests: dict[str, Any] = {}
    pairs = (("cgs", "mean_teacher"), ("cgs", "supervised"), ("mean_teacher", "supervised"))
    for a, b in pairs:
        if a in methods and b in methods:
            tests[f"{a}_vs_{b}"] = paired_wilcoxon(per_slice_small[a], per_slice_small[b])
    # and restricted to slices where a smallest-third structure is in the reference
    has_small = [
        i
        for i, z in enumerate(test_z)
        if any(bool((labels[z] == k).any()) for k, n in enumerate(names, 1) if n in small)
    ]
    if "cgs" in methods and "mean_teacher" in methods:
        tests["cgs_vs_mean_teacher_slices_with_small_structure"] = paired_wilcoxon(
            [per_slice_small["cgs"][i] for i in has_small],
            [per_slice_small["mean_teacher"][i] for i in has_small],
        )
    wall["total_s"] = time.perf_counter() - t_start
    wall["since_process_start_s"] = seconds_since_process_start()

    # ---------------------------------------------------------------- table
    rows = []
    for name in names_by_size:
        rows.append(
            [
                name,
                data["volume_voxels"][name],
                *(
                    _fmt(summary["per_class_pooled_dice"][m]["per_class"][name], len(seeds))
                    for m in methods
                ),
            ]
        )
    rows.append(
        [
            "mean smallest third",
            "",
            *(
                _fmt(summary["per_class_pooled_dice"][m]["small_third_mean"], len(seeds))
                for m in methods
            ),
        ]
    )
    rows.append(
        [
            "mean all",
            "",
            *(_fmt(summary["per_class_pooled_dice"][m]["all_mean"], len(seeds)) for m in methods),
        ]
    )
    rows.append(
        [
            "train s/run (wall / cpu)",
            "",
            *(
                f"{summary['per_class_pooled_dice'][m]['train_wall_s']['mean']:.0f} / "
                f"{summary['per_class_pooled_dice'][m]['train_cpu_s']['mean']:.0f}"
                for m in methods
            ),
        ]
    )
    table = format_table(["structure", "voxels", *(METHOD_TITLES[m] for m in methods)], rows)
    empty_test_result = {"n": 0, "mean_diff": None, "p_value": None}
    t_cgs = tests.get("cgs_vs_mean_teacher", empty_test_result)
    t_small = tests.get("cgs_vs_mean_teacher_slices_with_small_structure", empty_test_result)
    lines = [
        "",
        f"Pooled test Dice ({len(test_z)} test slices, {len(empty_test)} empty; "
        f"mean +- std over seeds {seeds}; {s.iterations} iterations, "
        f"{s.labeled_batch_size}+{s.unlabeled_batch_size} batch, "
        f"{len(runs[str(seeds[0])]['labeled_slices'])} labeled / "
        f"{runs[str(seeds[0])]['n_unlabeled']} unlabeled slices)",
        table,
        "",
        f"params: served generalist_only {params['served_generalist_only']:,} | plain U-Net "
        f"{params['plain_unet']:,} | CGS net with specialists {params['cgs_net_with_specialists']:,}"
        f" (same architecture: {same_arch})",
        f"inference ({s.threads} threads, input {'x'.join(map(str, x.shape))}, median of "
        f"{s.timing_repeats}): plain {timing['plain_unet']['median_ms']:.2f} ms, served "
        f"{timing['served']['median_ms']:.2f} ms -> ratio {ratio:.3f} "
        f"(forward with all heads {ratio_all:.3f}); 1 thread: plain "
        f"{timing_1t['plain_unet']['median_ms']:.2f} ms, served "
        f"{timing_1t['served']['median_ms']:.2f} ms -> ratio {ratio_1t:.3f}",
        f"Wilcoxon CGS vs MT, per-slice smallest-third Dice (seed mean): n={t_cgs['n']}, "
        f"mean diff {_num(t_cgs['mean_diff'])}, p={format_p(t_cgs['p_value'])}; "
        f"slices with a small structure: n={t_small['n']}, mean diff "
        f"{_num(t_small['mean_diff'])}, p={format_p(t_small['p_value'])}",
        f"wall time {wall['since_process_start_s'] or wall['total_s']:.0f} s (training "
        f"{wall['training_s']:.0f} s, {jobs} parallel process(es) x {s.train_threads} thread)",
    ]
    text = "\n".join(lines)
    print(text, flush=True)

    result = {
        **header,
        "quick": args.quick,
        "note": args.note,
        "seeds": seeds,
        "methods": list(methods),
        "settings": dataclasses.asdict(s),
        "design": {
            "data": DATASET_NOTES[s.dataset],
            "split": data["split"] + f"; labeled = ceil({s.labeled_fraction:.0%} of pool) random "
            "slices per seed (redrawn until every structure and one empty slice appear); "
            "unlabeled = the rest of the pool",
            "supervised": "plain U-Net (CGSNet(init).generalist_only(), i.e. build_plain_unet "
            "with the same initial weights), local loop: weak view, supervised_loss(gen, None, "
            "y) = masked CE + Dice, SGD/poly as the frames, EMA teacher evaluated",
            "frames": "CGSTrainer(use_specialists=False / True) with the same init; evaluated "
            "with serving_model() (EMA teacher generalist head)",
            "metric": "pooled Dice per class = 2|P&R| / (|P|+|R|) summed over all test slices "
            "(false positives on empty slices count); per-slice Dice = 1 when both are empty",
            "paired_test": "Wilcoxon signed-rank over test slices of the per-slice mean Dice of "
            "the smallest third of structures, each slice averaged over seeds; tied slices "
            "(e.g. empty and predicted empty by both) are dropped by scipy",
            "budget": "authors: SGD lr 0.01, 30k iterations, batch 12+12; here lr 0.03 (x3, "
            "because the run is ~3% as long; supervised-only pilots at 96x96 learned the small "
            "structures only after ~750-1000 iterations), batch 4+4, every method the same "
            "iterations; seeds run in parallel processes with 1 torch thread each",
        },
        "data": {
            "dataset": s.dataset,
            "source": data["source"],
            "shape": data["shape"],
            "spacing_mm": data["spacing_mm"],
            "structures": [
                {
                    "name": n,
                    "source_id": data["class_ids"][n],
                    "class": k,
                    "volume_voxels": data["volume_voxels"][n],
                    "slices_in_data": class_slices(labels, range(images.shape[0]), names)[n],
                    "test_slices": class_slices(labels, test_z, names)[n],
                    "test_voxels": int((test_y == k).sum()),
                }
                for k, n in enumerate(names, 1)
            ],
            "size_ratio_largest_smallest": max(data["volume_voxels"].values())
            / min(data["volume_voxels"].values()),
            "voxels_lost_by_crop": data["voxels_lost_by_crop"],
            "test_slices": test_z,
            "empty_test_slices": empty_test,
            "pool_slices": pool_z,
        },
        "runs": runs,
        "summary": summary,
        "per_slice_small_third_dice_seed_mean": {"z": test_z, **per_slice_small},
        "paired_tests": tests,
        "parameters": params,
        "inference": {
            "input_shape": list(x.shape),
            "threads": s.threads,
            "timing": timing,
            "ratio_served_over_plain": ratio,
            "ratio_forward_all_over_plain": ratio_all,
            "timing_1_thread": timing_1t,
            "ratio_served_over_plain_1_thread": ratio_1t,
            "note": "interleaved passes (plain, served, forward_all) after 3 warm-up rounds; "
            "served = CGS serving_model() of the last seed (trained weights), plain = "
            "build_plain_unet (random weights; same shapes, so the same cost)",
        },
        "wall_times_s": wall,
        "machine_at_end": {"load_average_1_5_15": list(os.getloadavg())},
        "machine_facts_end": machine_facts(),
        "printed": text,
    }
    write_json(out, result)
    print(f"wrote {out}")
    return 0


def _fmt(stats: dict[str, Any], n_seeds: int) -> str:
    if n_seeds > 1:
        return f"{stats['mean']:.3f} +- {stats['std']:.3f}"
    return f"{stats['mean']:.3f}"


def _short(name: str) -> str:
    """``adrenal_gland_right`` -> ``adrenal_R``, ``kidney_left`` -> ``kidney_L``."""
    parts = name.split("_")
    if parts[-1] in ("left", "right"):
        return f"{parts[0]}_{parts[-1][0].upper()}"
    return name


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
