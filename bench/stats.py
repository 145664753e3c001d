"""Benchmark: learning masks from a known area plus a few clicked pixels (issue 7).

Claim to test: statistics plus 5-10 clicks come close to full supervision and beat either
signal alone.

Every configuration trains the same MONAI UNet (2D, whole images, Adam, same epochs and seed)
with :class:`emlabel.methods.stats.StatsTrainer` on the *training* images of a data set, then
predicts the training images (what the `stats` trainer writes back as weak label versions)
and the held-out test images. Weak supervision is simulated from the reference masks with
:func:`emlabel.methods.stats.targets_from_label`: the exact area (pixel count of the
reference at the working resolution times the pixel area) and ``n`` clicks drawn uniformly
inside the object (no background clicks). On the training images the label the app writes
back is also scored: the prediction thresholded so that its area equals the known area, clicks
forced (:func:`emlabel.methods.stats.area_matched_labels`; "area-matched").

Configurations: ``stats`` (area only), ``clicks5`` (5 clicks, no area), ``both5`` (area + 5
clicks), ``both5_norec`` (the same without the reconstruction term), ``both1`` /
``both10`` / ``both20`` (area + 1 / 10 / 20 clicks), ``both5_ent`` (``both5`` plus our
entropy term ``lambda_ent = 0.3``, see :mod:`emlabel.methods.stats.losses`), ``grow1`` /
``grow5`` / ``grow10`` / ``grow20`` (our addition: each training image gets the label grown
from its clicks to the known area, :mod:`emlabel.methods.stats.geodesic`, trained with DiceCE
alone; the "grown label Dice" column scores those labels), ``grow5_weak_terms`` (the same
with the spec's terms kept on top), ``full`` (DiceCE on the full reference masks, no other
term: the fully supervised reference with the same network). ``PROBE_CONFIGS`` (run with
``--configs``) hold variants tried once.

Data sets (``../shared/data``, never copied):

1. ``bubil``: BU-BIL Dataset1 phase-contrast cells, gold standard, 128x160 px (1 px = 1
   unit; the images carry no spacing), 25 training / 10 test images (fixed split).
2. ``phantom_lesion``: the demo phantoms' liver lesion (label 6), the axial slice of largest
   lesion area of each phantom (64x64 at 1.6 mm), HU window [-200, 300]; 24 training / 12
   test phantoms. Small targets (a few dozen pixels) inside a larger organ.
3. ``brain_lesion``: pyradiomics brain MRs (``brain1``, ``brain2``): the 10 axial slices with a
   lesion, 128x128 crops (0.78 mm) at a seeded random position that holds the lesion,
   z-scored. Too few to hold out: this set is **transductive only** (train and evaluate on
   the same slices, as the app does when it writes weak labels back); its ``full`` row is
   an upper bound that has seen the masks it is scored on.

Reported per data set and configuration (mean over seeds, then over images): Dice and RAVD
on the training images and on the test images, the mean relative area error of the hard
mask on the training images, seconds of training, and a paired Wilcoxon test over test
images (training images for ``brain_lesion``) of ``both5`` against ``stats``, ``clicks5``
and ``full``.

Run ``nice -n 10 .venv/bin/python bench/stats.py [--quick] [--out PATH]`` from the project
root.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nrrd
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BUBIL,
    PROJECT_ROOT,
    PYRADIOMICS,
    bubil_gold,
    bubil_names,
    format_p,
    format_table,
    load_grey,
    paired_wilcoxon,
    resize_mask,
    run_header,
    summarize,
    write_json,
)

from emlabel.data.phantoms import PHANTOM_LABELS, PhantomOptions, make_phantom
from emlabel.methods.stats import ImageTargets, StatsOptions, StatsTrainer, targets_from_label
from emlabel.metrics import binary_metrics
from emlabel.nets import build_unet

SPLIT_SEED = 12345
LESION = PHANTOM_LABELS.index("lesion")


@dataclasses.dataclass(frozen=True)
class Config:
    """One kind of supervision."""

    name: str
    with_area: bool
    n_clicks: int
    use_reconstruction: bool = True
    lambda_ent: float = 0.0
    full: bool = False
    n_clicks_out: int = 0
    """Background clicks (drawn uniformly outside the object)."""
    reconstruction_mode: str = "partition"
    normalize_reconstruction: bool = False
    stat_temperature: float = 1.0
    grow: bool = False
    """Train on labels grown from the clicks to the known area (StatsOptions.grow_labels)."""
    weak_on_labeled: bool = True
    """StatsOptions.weak_terms_on_labeled (False: grown labels are trained by DiceCE alone)."""


CONFIGS: tuple[Config, ...] = (
    Config("stats", with_area=True, n_clicks=0),
    Config("clicks5", with_area=False, n_clicks=5),
    Config("both5", with_area=True, n_clicks=5),
    Config("both5_norec", with_area=True, n_clicks=5, use_reconstruction=False),
    Config("both1", with_area=True, n_clicks=1),
    Config("both10", with_area=True, n_clicks=10),
    Config("both20", with_area=True, n_clicks=20),
    Config("both5_ent", with_area=True, n_clicks=5, lambda_ent=0.3),
    Config("grow1", with_area=True, n_clicks=1, grow=True, weak_on_labeled=False),
    Config("grow5", with_area=True, n_clicks=5, grow=True, weak_on_labeled=False),
    Config("grow10", with_area=True, n_clicks=10, grow=True, weak_on_labeled=False),
    Config("grow20", with_area=True, n_clicks=20, grow=True, weak_on_labeled=False),
    Config("grow5_weak_terms", with_area=True, n_clicks=5, grow=True),
    Config("full", with_area=False, n_clicks=0, use_reconstruction=False, full=True),
)
PROBE_CONFIGS: tuple[Config, ...] = (
    Config("both5_local", with_area=True, n_clicks=5, reconstruction_mode="local"),
    Config(
        "both5_local_norm",
        with_area=True,
        n_clicks=5,
        reconstruction_mode="local",
        normalize_reconstruction=True,
    ),
    Config("both5_norm", with_area=True, n_clicks=5, normalize_reconstruction=True),
    Config("both5_bg5", with_area=True, n_clicks=5, n_clicks_out=5),
    Config(
        "both5_bg5_local_norm",
        with_area=True,
        n_clicks=5,
        n_clicks_out=5,
        reconstruction_mode="local",
        normalize_reconstruction=True,
    ),
    Config("both5_t025", with_area=True, n_clicks=5, stat_temperature=0.25),
    Config("both5_t01", with_area=True, n_clicks=5, stat_temperature=0.1),
    Config("both5_bg5_t025", with_area=True, n_clicks=5, n_clicks_out=5, stat_temperature=0.25),
)
"""Variants tried once (``--configs``; bench/results/stats_probe.*), not run by default."""


@dataclasses.dataclass(frozen=True)
class DataSet:
    """Training and (optionally) test images ``[N,1,H,W]``, masks ``[N,H,W]`` and spacing."""

    name: str
    spacing: tuple[float, float]
    train_images: torch.Tensor
    train_masks: torch.Tensor
    test_images: torch.Tensor | None
    test_masks: torch.Tensor | None
    epochs: int


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and budgets."""

    bubil_hw: tuple[int, int] = (128, 160)
    bubil_n_test: int = 10
    bubil_epochs: int = 80
    phantom_n_train: int = 24
    phantom_n_test: int = 12
    phantom_epochs: int = 150
    brain_crop: int = 128
    brain_epochs: int = 150
    channels: tuple[int, ...] = (16, 32, 64, 128)
    batch_size: int = 4
    learning_rate: float = 1e-3
    seeds: tuple[int, ...] = (0,)


def quick_settings() -> Settings:
    """A tiny configuration (a minute or two) for development."""
    return Settings(
        bubil_n_test=5,
        bubil_epochs=3,
        phantom_n_train=6,
        phantom_n_test=4,
        phantom_epochs=3,
        brain_epochs=3,
        seeds=(0,),
    )


# --------------------------------------------------------------------------- data


def load_bubil(s: Settings) -> DataSet:
    """BU-BIL images and gold masks at ``s.bubil_hw``, split by ``SPLIT_SEED``."""
    names = bubil_names()
    images = np.stack([load_grey(BUBIL / "RawImages" / f"{n}.png", s.bubil_hw) for n in names])
    masks = np.stack([resize_mask(bubil_gold(n), s.bubil_hw) for n in names])
    order = np.random.default_rng(SPLIT_SEED).permutation(len(names))
    test, train = order[: s.bubil_n_test], order[s.bubil_n_test :]
    x = torch.from_numpy(images)[:, None]
    y = torch.from_numpy(masks).long()
    return DataSet("bubil", (1.0, 1.0), x[train], y[train], x[test], y[test], s.bubil_epochs)


def phantom_lesion_slice(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The axial slice of a demo phantom where its lesion is largest: image in [0, 1], mask."""
    p = make_phantom(seed=seed, options=PhantomOptions())
    lesion = p.label == LESION
    z = int(np.argmax(lesion.sum(axis=(0, 1))))
    image = np.clip((p.image[:, :, z] + 200.0) / 500.0, 0.0, 1.0).astype(np.float32)
    return image, lesion[:, :, z], (p.spacing[0], p.spacing[1])


def load_phantom_lesions(s: Settings) -> DataSet:
    """Largest-lesion slices of phantoms 1000.. (training) and 2000.. (test)."""

    def stack(seeds: range) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
        slices = [phantom_lesion_slice(k) for k in seeds]
        x = torch.from_numpy(np.stack([a for a, _, _ in slices]))[:, None]
        y = torch.from_numpy(np.stack([m for _, m, _ in slices])).long()
        return x, y, slices[0][2]

    x_tr, y_tr, spacing = stack(range(1000, 1000 + s.phantom_n_train))
    x_te, y_te, _ = stack(range(2000, 2000 + s.phantom_n_test))
    return DataSet("phantom_lesion", spacing, x_tr, y_tr, x_te, y_te, s.phantom_epochs)


def load_brain_lesions(s: Settings) -> DataSet:
    """Lesion slices of the pyradiomics brain MRs, cropped at seeded positions (transductive)."""
    rng = np.random.default_rng(SPLIT_SEED)
    images, masks = [], []
    spacing = (1.0, 1.0)
    for case in ("brain1", "brain2"):
        img, header = nrrd.read(str(PYRADIOMICS / f"{case}_image.nrrd"))
        lab, _ = nrrd.read(str(PYRADIOMICS / f"{case}_label.nrrd"))
        directions = np.asarray(header["space directions"], dtype=float)
        spacing = tuple(float(v) for v in np.linalg.norm(directions, axis=1)[:2])
        for z in range(lab.shape[2]):
            mask = lab[:, :, z] > 0
            if not mask.any():
                continue
            rows, cols = np.nonzero(mask)
            c = s.brain_crop
            r0 = int(
                rng.integers(max(0, rows.max() - c + 1), min(rows.min(), mask.shape[0] - c) + 1)
            )
            c0 = int(
                rng.integers(max(0, cols.max() - c + 1), min(cols.min(), mask.shape[1] - c) + 1)
            )
            crop = img[r0 : r0 + c, c0 : c0 + c, z].astype(np.float32)
            images.append((crop - crop.mean()) / (crop.std() + 1e-6))
            masks.append(mask[r0 : r0 + c, c0 : c0 + c])
    x = torch.from_numpy(np.stack(images))[:, None]
    y = torch.from_numpy(np.stack(masks)).long()
    return DataSet("brain_lesion", spacing, x, y, None, None, s.brain_epochs)


# --------------------------------------------------------------------------- one run


def weak_targets(
    masks: torch.Tensor, spacing: Sequence[float], config: Config, seed: int
) -> list[ImageTargets]:
    """Area and clicks simulated from the reference masks (none for the full reference)."""
    if config.full:
        return [ImageTargets(spacing=tuple(spacing)) for _ in range(masks.shape[0])]
    generator = torch.Generator().manual_seed(seed)
    return [
        targets_from_label(
            m,
            spacing,
            n_in=config.n_clicks,
            n_out=config.n_clicks_out,
            with_area=config.with_area,
            structures=[1],
            generator=generator,
        )
        for m in masks
    ]


def score(pred: torch.Tensor, ref: torch.Tensor, spacing: Sequence[float]) -> dict[str, list]:
    """Per-image Dice and RAVD of binary predictions."""
    out: dict[str, list] = {"dice": [], "ravd": []}
    for p, r in zip(pred.numpy(), ref.numpy(), strict=True):
        m = binary_metrics(p == 1, r == 1, spacing=spacing)
        out["dice"].append(m.dsc)
        out["ravd"].append(m.ravd)
    return out


def run_config(data: DataSet, config: Config, s: Settings, seed: int) -> dict[str, Any]:
    """Train one configuration on the training images; score training and test images."""
    targets = weak_targets(data.train_masks, data.spacing, config, seed)
    # What the app writes back: the prediction thresholded to the known area, clicks forced.
    targets_for_matching = (
        targets if not config.full else [ImageTargets(spacing=tuple(data.spacing)) for _ in targets]
    )
    options = StatsOptions(
        use_reconstruction=config.use_reconstruction,
        reconstruction_mode=config.reconstruction_mode,
        normalize_reconstruction=config.normalize_reconstruction,
        stat_temperature=config.stat_temperature,
        grow_labels=config.grow,
        weak_terms_on_labeled=config.weak_on_labeled,
        lambda_ent=config.lambda_ent,
        lambda_full=1.0,
        learning_rate=s.learning_rate,
        max_epochs=data.epochs,
        batch_size=s.batch_size,
        seed=seed,
    )
    start = time.perf_counter()  # includes growing labels from the clicks (grow configs)
    trainer = StatsTrainer(
        lambda: build_unet(spatial_dims=2, out_channels=2, channels=s.channels),
        data.train_images,
        targets,
        full_labels=data.train_masks if config.full else None,
        options=options,
    )
    history = trainer.fit()
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "config": config.name,
        "seed": seed,
        "train_seconds": seconds,
        "final_area_error": history[-1].area_error,
        "train": score(trainer.predict_labels(data.train_images), data.train_masks, data.spacing),
        "train_matched": score(
            trainer.predict_area_matched(data.train_images, targets_for_matching),
            data.train_masks,
            data.spacing,
        ),
    }
    if config.grow:
        grown = trainer.grown_labels()
        stacked = torch.stack(
            [grown.get(i, torch.zeros_like(m)) for i, m in enumerate(data.train_masks)]
        )
        result["train_grown"] = score(stacked, data.train_masks, data.spacing)
    if data.test_images is not None and data.test_masks is not None:
        result["test"] = score(
            trainer.predict_labels(data.test_images), data.test_masks, data.spacing
        )
    return result


# --------------------------------------------------------------------------- report


def per_image(runs: Sequence[dict[str, Any]], config: str, split: str, metric: str) -> list[float]:
    """Per-image value averaged over seeds."""
    rows = [r[split][metric] for r in runs if r["config"] == config and split in r]
    return np.mean(np.asarray(rows, dtype=float), axis=0).tolist() if rows else []


def summarize_dataset(data: DataSet, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-configuration summaries and the paired tests of ``both5`` vs the others."""
    eval_split = "test" if data.test_images is not None else "train"
    table: dict[str, Any] = {}
    ran = {r["config"] for r in runs}
    for c in (c for c in (*CONFIGS, *PROBE_CONFIGS) if c.name in ran):
        mine = [r for r in runs if r["config"] == c.name]
        row: dict[str, Any] = {
            "train_seconds": summarize([r["train_seconds"] for r in mine]),
            "final_area_error": summarize([r["final_area_error"] for r in mine]),
        }
        for split in ("train", "train_matched", "train_grown", "test"):
            for metric in ("dice", "ravd"):
                values = per_image(runs, c.name, split, metric)
                if values:
                    row[f"{split}_{metric}"] = summarize(values)
        table[c.name] = row
    pairs = [("both5", other) for other in ("stats", "clicks5", "both5_norec", "full")]
    pairs += [("grow5", other) for other in ("stats", "clicks5", "both5", "full")]
    tests = {
        f"{a}_vs_{b}": paired_wilcoxon(
            per_image(runs, a, eval_split, "dice"), per_image(runs, b, eval_split, "dice")
        )
        for a, b in pairs
        if {a, b} <= ran
    }
    return {
        "name": data.name,
        "spacing": data.spacing,
        "n_train": int(data.train_images.shape[0]),
        "n_test": 0 if data.test_images is None else int(data.test_images.shape[0]),
        "image_shape": list(data.train_images.shape[2:]),
        "mean_object_pixels_train": float(data.train_masks.sum(dim=(1, 2)).float().mean()),
        "epochs": data.epochs,
        "paired_test_split": eval_split,
        "configs": table,
        "paired_tests_dice": tests,
        "runs": runs,
    }


def _cell(row: dict[str, Any], key: str) -> str:
    s = row.get(key)
    return "-" if s is None else f"{s['mean']:.3f} +- {s['std']:.3f}"


def print_dataset(res: dict[str, Any]) -> str:
    """A table per data set plus its paired tests."""
    rows = []
    for name, row in res["configs"].items():
        rows.append(
            [
                name,
                _cell(row, "train_dice"),
                _cell(row, "train_ravd"),
                _cell(row, "train_matched_dice"),
                _cell(row, "train_grown_dice"),
                _cell(row, "test_dice"),
                _cell(row, "test_ravd"),
                f"{row['final_area_error']['mean']:.3f}",
                f"{row['train_seconds']['mean']:.0f}",
            ]
        )
    head = (
        f"{res['name']}: {res['n_train']} training / {res['n_test']} test images "
        f"{'x'.join(map(str, res['image_shape']))}, object {res['mean_object_pixels_train']:.0f}"
        f" px on average, {res['epochs']} epochs"
    )
    table = format_table(
        [
            "config",
            "train Dice",
            "train RAVD",
            "train Dice, area-matched",
            "grown label Dice",
            "test Dice",
            "test RAVD",
            "area err",
            "train s",
        ],
        rows,
    )
    tests = [
        f"  Wilcoxon ({res['paired_test_split']} Dice) {k}: mean diff "
        f"{v['mean_diff']:+.3f}, p = {format_p(v['p_value'])} (n = {v['n']})"
        for k, v in res["paired_tests_dice"].items()
        if v["mean_diff"] is not None
    ]
    return "\n".join([head, table, *tests])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings for development")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench/results/stats.json")
    parser.add_argument(
        "--datasets", default="bubil,phantom_lesion,brain_lesion", help="comma-separated"
    )
    parser.add_argument("--seeds", default=None, help="comma-separated training seeds")
    parser.add_argument(
        "--configs", default=None, help="comma-separated subset of configurations (development)"
    )
    args = parser.parse_args(argv)
    configs = CONFIGS
    if args.configs:
        by_name = {c.name: c for c in (*CONFIGS, *PROBE_CONFIGS)}
        unknown = sorted(set(args.configs.split(",")) - set(by_name))
        if unknown:
            parser.error(f"unknown configurations {unknown}; choose from {sorted(by_name)}")
        configs = tuple(by_name[n] for n in args.configs.split(","))
    s = quick_settings() if args.quick else Settings()
    if args.seeds:
        s = dataclasses.replace(s, seeds=tuple(int(v) for v in args.seeds.split(",")))
    torch.set_num_threads(2)
    header = run_header()
    loaders = {
        "bubil": load_bubil,
        "phantom_lesion": load_phantom_lesions,
        "brain_lesion": load_brain_lesions,
    }
    start = time.perf_counter()
    results = []
    for name in args.datasets.split(","):
        data = loaders[name](s)
        runs = []
        for seed in s.seeds:
            for c in configs:
                r = run_config(data, c, s, seed)
                log(
                    f"{name} seed {seed} {c.name}: train Dice "
                    f"{np.mean(r['train']['dice']):.3f}"
                    + (f", test Dice {np.mean(r['test']['dice']):.3f}" if "test" in r else "")
                    + f" ({r['train_seconds']:.0f} s)"
                )
                runs.append(r)
        res = summarize_dataset(data, runs)
        print(print_dataset(res) + "\n", flush=True)
        results.append(res)
    wall = time.perf_counter() - start
    print(f"total wall time {wall:.0f} s")
    write_json(
        args.out,
        {
            **header,
            "settings": dataclasses.asdict(s),
            "quick": args.quick,
            "wall_seconds": wall,
            "datasets": results,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
