"""Benchmark: label-error detectors -- the EMLabel verifier vs MONAI Label's scoring ideas.

Detectors, all driven by one small UNet per data set (trained on clean / reference labels of
images that are *not* judged) and compared on the same labels in the same run:

(a) ``verifier``: :class:`emlabel.verify.LabelVerifier` in prior mode (hand-set weights, no
    reviews) over :func:`emlabel.verify.structure_features` computed from an ensemble of the
    model's test-time-augmented predictions (BU-BIL: identity + 3 flips; phantoms and CT, whose
    anatomy is not mirror-symmetric: identity + two 2-voxel rolls + an intensity jitter), with a :class:`emlabel.verify.ShapePopulation` fitted
    on the clean *training* labels (their features use the model's predictions on its own
    training images). Variants: ``verifier_heldout_pop`` (population fitted on a few clean
    labels the model never saw), ``verifier_shape_only`` (no model: volume / components /
    containment / intensity against the population).
(b) ``mc_dropout_entropy``: MONAI Label's epistemic scoring idea. 10 stochastic passes with
    dropout on, predictive entropy of the mean softmax, averaged over voxels. It ignores the
    label. Per structure: mean entropy over the model's predicted region of the structure
    (dilated by 2 voxels) -- still label-free.
(c) ``one_minus_dice``: MONAI Label's ``dice`` scoring idea: 1 - Dice(label, model prediction).

Scores are ranked (higher = more doubtful). Reported per data set and method: AUROC
(:func:`emlabel.verify.roc_curve`), sensitivity at 5% / 10% review budgets (the top
``ceil(f * n)`` items by score are flagged; an item tie at the budget boundary is credited by
its expected share under random tie-breaking), and wall seconds per judged image (model
inference of that method + its scoring, measured in this run; training is shared and reported
separately).

Data sets (``/work/shared/data``):

1. Demo phantoms (``make_phantom``, small shape): the model is trained on the clean labels of
   the first phantoms, a few more clean labels form the held-out population, about half of the
   rest get ``corrupt_label`` noise. Per structure "bad" = Dice(label, truth) < 0.8; per image:
   "any corruption".
2. BU-BIL Dataset1: the model is trained on the gold standard of a fixed random subset of the
   images; every Person1/3/4/5 x Amira/ImageJ mask of the other images is one label to judge
   (Person2 == gold, left out). "Bad" = Dice(mask, gold) < 0.8 at full resolution.
3. TotalSegmentator ``example_ct_sm``: ``example_seg`` is the reference, each structure of
   ``example_seg_fast`` is judged ("bad" = Dice(fast, seg) < 0.8; also < 0.9, since only one
   structure fails 0.8). The model is a 2D axial UNet trained on the *reference* labels of
   every other slice (two folds, each slice predicted by the fold that did not see it): it
   learns from the reference labels of neighbouring 3 mm slices of the same scan, which
   favours agreement with the reference. One scan: no shape population (the verifier runs on
   its default expectations).

Run ``nice -n 19 .venv/bin/python bench/verifier.py [--quick] [--out PATH]`` from the project
root.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BUBIL,
    PROJECT_ROOT,
    TOTALSEG,
    Member,
    Train,
    format_table,
    load_grey,
    object_mask,
    predict_members,
    resize_mask,
    run_header,
    softmax_of,
    train_unet,
    write_json,
)

from emlabel.data.corruptions import corrupt_label
from emlabel.data.phantoms import PHANTOM_LABELS, PhantomOptions, make_phantom
from emlabel.metrics import dice
from emlabel.verify import LabelVerifier, ShapePopulation, roc_curve, structure_features
from emlabel.verify.budget import review_budget

ANNOTATORS = tuple(f"Person{p}_{t}" for p in (1, 3, 4, 5) for t in ("Amira", "ImageJ"))
BAD_DICE = 0.8
BUDGETS = (0.05, 0.10)
SPLIT_SEED = 12345

METHOD_LABELS = {
    "verifier": "(a) verifier, train-label population",
    "verifier_heldout_pop": "(a') verifier, held-out population",
    "verifier_shape_only": "(a0) verifier, shape only (no model)",
    "mc_dropout_entropy": "(b) MC-dropout entropy",
    "one_minus_dice": "(c) 1 - Dice(label, pred)",
}


# --------------------------------------------------------------------------- settings


"""A test-time augmentation: ("flip", axes), ("roll", voxels per axis) or
("intensity", (scale, shift)) of the normalised image; ("flip", ()) is the identity."""


@dataclasses.dataclass(frozen=True)
class PhantomSettings:
    n: int = 40
    n_train: int = 8
    n_population: int = 4
    corrupt_fraction: float = 0.5
    shape: tuple[int, int, int] = (48, 48, 32)
    train: Train = Train(steps=500, batch_size=2, channels=(16, 32, 64, 128))  # noqa: RUF009 (Train is frozen)
    members: tuple[Member, ...] = (
        ("flip", ()),
        ("roll", (2, 0, 0)),
        ("roll", (0, -2, 0)),
        ("intensity", (1.1, 0.1)),
    )
    """TTA members (identity first). No flips: the phantoms' anatomy is not mirror-symmetric."""


@dataclasses.dataclass(frozen=True)
class BubilSettings:
    height: int = 256
    width: int = 320
    n_train: int = 12
    n_population: int = 3
    n_judged_images: int | None = None
    """None = every image not used for training or the population."""
    train: Train = Train(steps=400, batch_size=4, channels=(16, 32, 64, 128, 256))  # noqa: RUF009 (Train is frozen)
    members: tuple[Member, ...] = (("flip", ()), ("flip", (0,)), ("flip", (1,)), ("flip", (0, 1)))
    """TTA members (identity first); the model is trained with random flips."""


@dataclasses.dataclass(frozen=True)
class TotalsegSettings:
    train: Train = Train(steps=250, batch_size=4, channels=(16, 32, 64, 128))  # noqa: RUF009 (Train is frozen)
    hu_window: tuple[float, float] = (-400.0, 600.0)
    members: tuple[Member, ...] = (
        ("flip", ()),
        ("roll", (2, 0)),
        ("roll", (0, -2)),
        ("intensity", (1.1, 0.1)),
    )
    """TTA members (identity first). No flips: left/right structures are distinct classes."""


def quick_settings() -> tuple[PhantomSettings, BubilSettings, TotalsegSettings]:
    return (
        PhantomSettings(
            n=14,
            n_train=4,
            n_population=3,
            shape=(32, 32, 24),
            train=Train(steps=30, batch_size=2, channels=(8, 16, 32), mc_passes=4),
        ),
        BubilSettings(
            height=128,
            width=160,
            n_train=4,
            n_population=3,
            n_judged_images=4,
            train=Train(steps=30, batch_size=4, channels=(8, 16, 32, 64), mc_passes=4),
        ),
        TotalsegSettings(
            train=Train(steps=30, batch_size=4, channels=(8, 16, 32, 64), mc_passes=4),
        ),
    )


# --------------------------------------------------------------------------- model


def pad_to(arr: np.ndarray, multiple: int, n_spatial: int, value: float = 0.0) -> np.ndarray:
    """Pad the last ``n_spatial`` axes at the end up to a multiple of ``multiple``."""
    pads = [(0, 0)] * (arr.ndim - n_spatial)
    pads += [(0, (-s) % multiple) for s in arr.shape[arr.ndim - n_spatial :]]
    return np.pad(arr, pads, mode="constant", constant_values=value)


def mc_dropout_probs(model: torch.nn.Module, image: np.ndarray, passes: int) -> np.ndarray:
    """Mean softmax [C, *S] over ``passes`` forward passes with only the dropout layers on."""
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.train()
    x = torch.from_numpy(image)
    try:
        total = sum(softmax_of(model, x) for _ in range(passes))
    finally:
        model.eval()
    return total / passes


def entropy_map(p: np.ndarray) -> np.ndarray:
    """Predictive entropy (nats) per voxel of a [C, *S] probability map."""
    q = np.clip(p, 1e-8, 1.0)
    return -(q * np.log(q)).sum(axis=0)


def region_entropy(ent: np.ndarray, pred: np.ndarray, value: int) -> float:
    """Mean entropy over the predicted region of ``value`` dilated by 2 voxels (0 if none)."""
    region = ndimage.binary_dilation(pred == value, iterations=2)
    return float(ent[region].mean()) if region.any() else 0.0


# --------------------------------------------------------------------------- evaluation


def sensitivity_at_budget(scores: Sequence[float], bad: Sequence[bool], fraction: float) -> float:
    """Share of bad items among the top ``ceil(fraction * n)`` by score (ties: expected value)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(bad, dtype=bool)
    if not y.any():
        return math.nan
    k = review_budget(fraction, len(s))
    if k == 0:
        return 0.0
    kth = np.sort(s)[::-1][k - 1]
    above = s > kth
    tied = s == kth
    slots = k - int(above.sum())
    caught = float(np.count_nonzero(above & y)) + slots * np.count_nonzero(tied & y) / tied.sum()
    return caught / int(y.sum())


def evaluate(
    scores: Mapping[str, Sequence[float]], bad: Sequence[bool]
) -> dict[str, dict[str, float]]:
    out = {}
    for method, s in scores.items():
        row = {"auroc": roc_curve(s, bad).auc}
        for f in BUDGETS:
            row[f"sens@{round(100 * f)}%"] = sensitivity_at_budget(s, bad, f)
        out[method] = row
    return out


def log(msg: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


class Clock:
    """Accumulates wall seconds per method."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, methods: Sequence[str], seconds: float) -> None:
        for m in methods:
            self.seconds[m] = self.seconds.get(m, 0.0) + seconds

    def run(self, methods: Sequence[str], fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        self.add(methods, time.perf_counter() - start)
        return result


def task_result(
    name: str,
    items: list[dict[str, Any]],
    bad_key: str,
    methods: Sequence[str],
    clock: Clock,
    n_images: int,
    note: str,
) -> dict[str, Any]:
    bad = [bool(it[bad_key]) for it in items]
    scores = {m: [float(it["scores"][m]) for it in items] for m in methods}
    summary = evaluate(scores, bad)
    for m in methods:
        summary[m]["s_per_image"] = clock.seconds.get(m, math.nan) / max(1, n_images)
        summary[m]["s_per_item"] = clock.seconds.get(m, math.nan) / max(1, len(items))
    signal_auroc = {}
    if items and "verifier_detail" in items[0]:
        for sig in items[0]["verifier_detail"]["signals"]:
            values = [float(it["verifier_detail"]["signals"][sig]) for it in items]
            signal_auroc[sig] = roc_curve(values, bad).auc if len(set(values)) > 1 else None
    return {
        "task": name,
        "note": note,
        "verifier_signal_auroc": signal_auroc,
        "bad_definition": bad_key,
        "n_items": len(items),
        "n_bad": int(sum(bad)),
        "n_images": n_images,
        "sens_ceiling": {
            f"{round(100 * f)}%": min(1.0, review_budget(f, len(items)) / max(1, sum(bad)))
            for f in BUDGETS
        },
        "summary": summary,
    }


def verifier_scores(
    verifier: LabelVerifier,
    feats: Mapping[str, Any],
    population: ShapePopulation | None,
) -> tuple[dict[str, float], dict[str, dict[str, Any]], float]:
    """Per-structure P(wrong); per structure its top reason and signals; image P(wrong) (max)."""
    verdict = verifier.score_image(feats, population)
    probs = {k: v.probability_wrong for k, v in verdict.structures.items()}
    detail = {
        k: {"top_reason": v.reasons[0] if v.reasons else "", "signals": v.signals}
        for k, v in verdict.structures.items()
    }
    return probs, detail, verdict.probability_wrong


# --------------------------------------------------------------------------- 1. phantoms


def norm_hu(image: np.ndarray) -> np.ndarray:
    return ((np.clip(image, -250.0, 350.0) - 50.0) / 150.0).astype(np.float32)


def run_phantoms(s: PhantomSettings, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    names = list(PHANTOM_LABELS[1:])
    values = {n: PHANTOM_LABELS.index(n) for n in names}
    options = PhantomOptions(shape=s.shape)
    phantoms = [make_phantom(seed=seed * 1000 + i, options=options) for i in range(s.n)]
    spacing = phantoms[0].spacing
    stride = 2 ** (len(s.train.channels) - 1)
    x = [pad_to(norm_hu(p.image)[None], stride, 3, value=-2.0) for p in phantoms]
    shape = s.shape

    train_idx = list(range(s.n_train))
    pop_idx = list(range(s.n_train, s.n_train + s.n_population))
    judged = list(range(s.n_train + s.n_population, s.n))
    rng = np.random.default_rng([seed, 1])
    n_corrupt = round(s.corrupt_fraction * len(judged))
    corrupted = set(rng.permutation(judged)[:n_corrupt].tolist())
    gen_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    model = train_unet(
        np.stack([x[i] for i in train_idx]),
        np.stack([pad_to(phantoms[i].label.astype(np.int64), stride, 3) for i in train_idx]),
        n_classes=len(PHANTOM_LABELS),
        cfg=s.train,
        flip_axes=(),
        seed=seed,
        roll_axes=(0, 1),
        roll_max=3,
    )
    train_s = time.perf_counter() - t1
    log(f"phantoms: trained in {train_s:.0f} s")
    crop = tuple(slice(0, n) for n in shape)
    labels_map = dict(values)

    def members_of(i: int) -> tuple[list[np.ndarray], float, float]:
        """Member label maps (identity first) and the time of identity / other passes."""
        a = time.perf_counter()
        probs = predict_members(model, x[i], s.members[:1])
        b = time.perf_counter()
        probs += predict_members(model, x[i], s.members[1:])
        c = time.perf_counter()
        maps = [p[(slice(None), *crop)].argmax(0).astype(np.uint8) for p in probs]
        return maps, b - a, c - b

    # Populations: clean training labels (features with the model's predictions on its own
    # training images) and held-out clean labels (never trained on).
    t2 = time.perf_counter()

    def clean_features(i: int) -> list[Any]:
        p = phantoms[i]
        return list(
            structure_features(
                p.label,
                members_of(i)[0],
                spacing=spacing,
                labels=labels_map,
                image=p.image,
                image_id=f"phantom_{i}",
            ).values()
        )

    population = ShapePopulation.fit([f for i in train_idx for f in clean_features(i)])
    population_heldout = ShapePopulation.fit([f for i in pop_idx for f in clean_features(i)])
    population_s = time.perf_counter() - t2
    verifier = LabelVerifier()

    clock = Clock()
    struct_items: list[dict[str, Any]] = []
    image_items: list[dict[str, Any]] = []
    for i in judged:
        p = phantoms[i]
        if i in corrupted:
            label, records = corrupt_label(
                p.label, rng=np.random.default_rng([seed, i, 2]), spacing=spacing
            )
        else:
            label, records = p.label.copy(), []
        maps, t_id, t_flip = members_of(i)
        pred = maps[0]
        clock.add(["verifier", "verifier_heldout_pop", "one_minus_dice"], t_id)
        clock.add(["verifier", "verifier_heldout_pop"], t_flip)

        def feats_ens(label: np.ndarray = label, maps: list[np.ndarray] = maps, p: Any = p) -> Any:
            return structure_features(
                label, maps, spacing=spacing, labels=labels_map, image=p.image
            )

        feats = clock.run(["verifier", "verifier_heldout_pop"], feats_ens)
        v_probs, v_reasons, v_img = clock.run(
            ["verifier"], lambda feats=feats: verifier_scores(verifier, feats, population)
        )
        h_probs, _, h_img = clock.run(
            ["verifier_heldout_pop"],
            lambda feats=feats: verifier_scores(verifier, feats, population_heldout),
        )

        def shape_only(label: np.ndarray = label, p: Any = p) -> Any:
            f = structure_features(label, (), spacing=spacing, labels=labels_map, image=p.image)
            return verifier_scores(verifier, f, population)

        s_probs, _, s_img = clock.run(["verifier_shape_only"], shape_only)

        def one_minus_dice(label: np.ndarray = label, pred: np.ndarray = pred) -> dict[str, float]:
            return {n: 1.0 - dice(label == v, pred == v) for n, v in values.items()}

        d_scores = clock.run(["one_minus_dice"], one_minus_dice)

        def mc(i: int = i) -> tuple[float, dict[str, float]]:
            probs = mc_dropout_probs(model, x[i], s.train.mc_passes)[(slice(None), *crop)]
            ent = entropy_map(probs)
            mean_pred = probs.argmax(0)
            return float(ent.mean()), {
                n: region_entropy(ent, mean_pred, v) for n, v in values.items()
            }

        mc_img, mc_struct = clock.run(["mc_dropout_entropy"], mc)

        truth_dice = {n: float(dice(label == v, p.label == v)) for n, v in values.items()}
        pred_dice = {n: float(dice(pred == v, p.label == v)) for n, v in values.items()}
        for n in names:
            struct_items.append(
                {
                    "image": f"phantom_{i}",
                    "structure": n,
                    "dice_to_truth": truth_dice[n],
                    "model_dice_to_truth": pred_dice[n],
                    "bad": truth_dice[n] < BAD_DICE,
                    "changed": bool(truth_dice[n] < 1.0),
                    "verifier_detail": v_reasons[n],
                    "scores": {
                        "verifier": v_probs[n],
                        "verifier_heldout_pop": h_probs[n],
                        "verifier_shape_only": s_probs[n],
                        "mc_dropout_entropy": mc_struct[n],
                        "one_minus_dice": d_scores[n],
                    },
                }
            )
        image_items.append(
            {
                "image": f"phantom_{i}",
                "corrupted": i in corrupted,
                "any_corruption": bool((label != p.label).any()),
                "any_bad_structure": min(truth_dice.values()) < BAD_DICE,
                "corruptions": records,
                "scores": {
                    "verifier": v_img,
                    "verifier_heldout_pop": h_img,
                    "verifier_shape_only": s_img,
                    "mc_dropout_entropy": mc_img,
                    "one_minus_dice": max(d_scores.values()),
                },
            }
        )
    methods = list(METHOD_LABELS)
    n_img = len(judged)
    tasks = [
        task_result(
            "phantoms: structure Dice<0.8",
            struct_items,
            "bad",
            methods,
            clock,
            n_img,
            "per structure of each judged phantom label; s/image = per phantom",
        ),
        task_result(
            "phantoms: image any corruption",
            image_items,
            "any_corruption",
            methods,
            clock,
            n_img,
            "image score = max over structures (verifier, 1-Dice); mean entropy (MC)",
        ),
    ]
    model_dice = {
        n: float(
            np.mean([it["model_dice_to_truth"] for it in struct_items if it["structure"] == n])
        )
        for n in names
    }
    return {
        "settings": dataclasses.asdict(s),
        "spacing_mm": list(spacing),
        "split": {
            "train": train_idx,
            "population_heldout": pop_idx,
            "judged": judged,
            "corrupted": sorted(corrupted),
        },
        "model_dice_to_truth_on_judged": model_dice,
        "population_typical_dice": _typical_dice(population, names),
        "population_heldout_typical_dice": _typical_dice(population_heldout, names),
        "tasks": tasks,
        "items": {"structures": struct_items, "images": image_items},
        "wall_seconds": {
            "generate": gen_s,
            "train": train_s,
            "populations": population_s,
            "methods": clock.seconds,
        },
    }


def _typical_dice(pop: ShapePopulation, names: Sequence[str]) -> dict[str, float | None]:
    out = {}
    for n in names:
        stat = pop.typical(n, "dice_to_ensemble_mean")
        out[n] = None if stat is None else stat.median
    return out


# --------------------------------------------------------------------------- 2. BU-BIL


def run_bubil(s: BubilSettings, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    hw = (s.height, s.width)
    names = sorted(p.stem for p in (BUBIL / "RawImages").glob("*.png"))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(names))
    train = sorted(names[i] for i in order[: s.n_train])
    pop = sorted(names[i] for i in order[s.n_train : s.n_train + s.n_population])
    judged = sorted(names[i] for i in order[s.n_train + s.n_population :])
    if s.n_judged_images is not None:
        judged = judged[: s.n_judged_images]
    image = {n: load_grey(BUBIL / "RawImages" / f"{n}.png", hw) for n in train + pop + judged}
    gold_full = {n: object_mask(BUBIL / "GoldStandard" / f"seg_{n}.png") for n in image}
    gold = {n: resize_mask(g, hw) for n, g in gold_full.items()}
    load_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    model = train_unet(
        np.stack([image[n][None] for n in train]),
        np.stack([gold[n].astype(np.int64) for n in train]),
        n_classes=2,
        cfg=s.train,
        flip_axes=(0, 1),
        seed=seed,
    )
    train_s = time.perf_counter() - t1
    log(f"bubil: trained in {train_s:.0f} s")
    labels_map = {"cell": 1}
    spacing = (1.0, 1.0)  # pixels of the resized grid
    verifier = LabelVerifier()

    def members_of(n: str) -> tuple[list[np.ndarray], float, float]:
        a = time.perf_counter()
        probs = predict_members(model, image[n][None], s.members[:1])
        b = time.perf_counter()
        probs += predict_members(model, image[n][None], s.members[1:])
        c = time.perf_counter()
        return [p.argmax(0).astype(np.uint8) for p in probs], b - a, c - b

    t2 = time.perf_counter()

    def clean_features(names_: Sequence[str]) -> list[Any]:
        return [
            f
            for n in names_
            for f in structure_features(
                gold[n].astype(np.uint8),
                members_of(n)[0],
                spacing=spacing,
                labels=labels_map,
                image=image[n],
                containment={},
                image_id=n,
            ).values()
        ]

    population = ShapePopulation.fit(clean_features(train))
    population_heldout = ShapePopulation.fit(clean_features(pop))
    population_s = time.perf_counter() - t2

    clock = Clock()
    items: list[dict[str, Any]] = []
    model_dice = {}
    for n in judged:
        maps, t_id, t_flip = members_of(n)
        pred = maps[0].astype(bool)
        model_dice[n] = float(dice(pred, gold[n]))
        clock.add(["verifier", "verifier_heldout_pop", "one_minus_dice"], t_id)
        clock.add(["verifier", "verifier_heldout_pop"], t_flip)

        def mc(n: str = n) -> float:
            return float(
                entropy_map(mc_dropout_probs(model, image[n][None], s.train.mc_passes)).mean()
            )

        mc_score = clock.run(["mc_dropout_entropy"], mc)
        for who in ANNOTATORS:
            path = BUBIL / "ExpertsAnnotations" / who / f"seg_{n}.png"
            if not path.exists():  # some annotators skipped images
                continue
            full = object_mask(path)
            if full.shape != gold_full[n].shape:
                continue
            truth_dice = float(dice(full, gold_full[n]))
            label = resize_mask(full, hw).astype(np.uint8)

            def feats_ens(
                label: np.ndarray = label, maps: list[np.ndarray] = maps, n: str = n
            ) -> Any:
                return structure_features(
                    label,
                    maps,
                    spacing=spacing,
                    labels=labels_map,
                    image=image[n],
                    containment={},
                )

            feats = clock.run(["verifier", "verifier_heldout_pop"], feats_ens)
            v_probs, v_reasons, _ = clock.run(
                ["verifier"], lambda feats=feats: verifier_scores(verifier, feats, population)
            )
            h_probs, _, _ = clock.run(
                ["verifier_heldout_pop"],
                lambda feats=feats: verifier_scores(verifier, feats, population_heldout),
            )

            def shape_only(label: np.ndarray = label, n: str = n) -> Any:
                f = structure_features(
                    label, (), spacing=spacing, labels=labels_map, image=image[n], containment={}
                )
                return verifier_scores(verifier, f, population)

            s_probs, _, _ = clock.run(["verifier_shape_only"], shape_only)
            d_score = clock.run(
                ["one_minus_dice"], lambda label=label, pred=pred: 1.0 - dice(label > 0, pred)
            )
            items.append(
                {
                    "image": n,
                    "annotator": who,
                    "dice_to_gold": truth_dice,
                    "bad": truth_dice < BAD_DICE,
                    "verifier_detail": v_reasons["cell"],
                    "scores": {
                        "verifier": v_probs["cell"],
                        "verifier_heldout_pop": h_probs["cell"],
                        "verifier_shape_only": s_probs["cell"],
                        "mc_dropout_entropy": mc_score,
                        "one_minus_dice": d_score,
                    },
                }
            )
    tasks = [
        task_result(
            "BU-BIL: expert mask Dice<0.8",
            items,
            "bad",
            list(METHOD_LABELS),
            clock,
            len(judged),
            "each Person1/3/4/5 x Amira/ImageJ mask of a judged image is one item; "
            "s/image = per raw image (its 8 masks)",
        )
    ]
    return {
        "settings": dataclasses.asdict(s),
        "split": {"train_gold": train, "population_heldout_gold": pop, "judged": judged},
        "model_dice_to_gold_on_judged": model_dice,
        "model_dice_mean": float(np.mean(list(model_dice.values()))),
        "population_typical_dice": _typical_dice(population, ["cell"]),
        "population_heldout_typical_dice": _typical_dice(population_heldout, ["cell"]),
        "tasks": tasks,
        "items": items,
        "wall_seconds": {
            "load": load_s,
            "train": train_s,
            "populations": population_s,
            "methods": clock.seconds,
        },
    }


# --------------------------------------------------------------------------- 3. TotalSeg


def run_totalseg(s: TotalsegSettings, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    ct_img = nib.load(TOTALSEG / "example_ct_sm.nii.gz")
    ct = np.asarray(ct_img.dataobj, dtype=np.float32)
    ref = np.asarray(nib.load(TOTALSEG / "example_seg.nii.gz").dataobj).astype(np.int64)
    fast = np.asarray(nib.load(TOTALSEG / "example_seg_fast.nii.gz").dataobj).astype(np.int64)
    if ct.shape != ref.shape or fast.shape != ref.shape:
        raise ValueError(f"shapes differ: ct {ct.shape}, seg {ref.shape}, fast {fast.shape}")
    spacing = tuple(float(z) for z in ct_img.header.get_zooms()[:3])
    values = sorted((set(np.unique(ref).tolist()) | set(np.unique(fast).tolist())) - {0})
    index = {v: k + 1 for k, v in enumerate(values)}  # label value -> class channel
    lut = np.zeros(max(values) + 1, np.int64)
    for v, k in index.items():
        lut[v] = k
    n_classes = len(values) + 1
    lo, hi = s.hu_window
    norm = ((np.clip(ct, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)
    stride = 2 ** (len(s.train.channels) - 1)
    n_z = ct.shape[2]
    xs = np.stack([pad_to(norm[None, :, :, z], stride, 2, value=-1.0) for z in range(n_z)])
    ys = np.stack([pad_to(lut[ref[:, :, z]], stride, 2) for z in range(n_z)])
    crop = (slice(None), slice(0, ct.shape[0]), slice(0, ct.shape[1]))
    load_s = time.perf_counter() - t0

    folds = [list(range(0, n_z, 2)), list(range(1, n_z, 2))]
    t1 = time.perf_counter()
    models = [
        train_unet(
            xs[f],
            ys[f],
            n_classes=n_classes,
            cfg=s.train,
            flip_axes=(),
            seed=seed + k,
            roll_axes=(0, 1),
            roll_max=3,
        )
        for k, f in enumerate(folds)
    ]
    train_s = time.perf_counter() - t1
    log(f"totalseg: trained in {train_s:.0f} s")
    clock = Clock()
    # Predictions, slice by slice, by the fold model that did not train on the slice.
    members = np.zeros((len(s.members), *ct.shape), np.uint8)
    mc_probs = np.zeros((n_classes, *ct.shape), np.float32)
    for k, fold in enumerate(folds):
        model = models[1 - k]
        for z in fold:
            for j, member in enumerate(s.members):
                a = time.perf_counter()
                p = predict_members(model, xs[z], [member])[0][crop]
                members[j, :, :, z] = lut_inverse(p.argmax(0), values)
                who = ["verifier", "one_minus_dice"] if j == 0 else ["verifier"]
                clock.add(who, time.perf_counter() - a)
            a = time.perf_counter()
            mc_probs[:, :, :, z] = mc_dropout_probs(model, xs[z], s.train.mc_passes)[crop]
            clock.add(["mc_dropout_entropy"], time.perf_counter() - a)
    pred = members[0]
    labels_map = {f"label_{v}": v for v in values}
    verifier = LabelVerifier()

    def verify() -> tuple[dict[str, float], dict[str, str]]:
        feats = structure_features(
            fast.astype(np.uint8),
            list(members),
            spacing=spacing,
            labels=labels_map,
            image=ct,
            containment={},
        )
        probs, reasons, _ = verifier_scores(verifier, feats, None)
        return probs, reasons

    v_probs, v_reasons = clock.run(["verifier"], verify)

    def verify_shape() -> dict[str, float]:
        feats = structure_features(
            fast.astype(np.uint8),
            (),
            spacing=spacing,
            labels=labels_map,
            image=ct,
            containment={},
        )
        return verifier_scores(verifier, feats, None)[0]

    s_probs = clock.run(["verifier_shape_only"], verify_shape)
    d_scores = clock.run(
        ["one_minus_dice"],
        lambda: {v: 1.0 - dice(fast == v, pred == v) for v in values},
    )

    def mc() -> dict[int, float]:
        ent = entropy_map(mc_probs)
        mean_pred = lut_inverse(mc_probs.argmax(0), values)
        return {v: region_entropy(ent, mean_pred, v) for v in values}

    mc_scores = clock.run(["mc_dropout_entropy"], mc)
    items = []
    for v in values:
        d = float(dice(fast == v, ref == v))
        items.append(
            {
                "structure": f"label_{v}",
                "voxels_seg": int(np.count_nonzero(ref == v)),
                "voxels_fast": int(np.count_nonzero(fast == v)),
                "dice_fast_to_seg": d,
                "model_dice_to_seg": float(dice(pred == v, ref == v)),
                "bad": d < BAD_DICE,
                "bad_0.9": d < 0.9,
                "verifier_detail": v_reasons[f"label_{v}"],
                "scores": {
                    "verifier": v_probs[f"label_{v}"],
                    "verifier_shape_only": s_probs[f"label_{v}"],
                    "mc_dropout_entropy": mc_scores[v],
                    "one_minus_dice": d_scores[v],
                },
            }
        )
    methods = ["verifier", "verifier_shape_only", "mc_dropout_entropy", "one_minus_dice"]
    note = (
        "one CT, 41 structures of example_seg_fast judged against example_seg; no shape "
        "population (one scan): verifier uses default expectations; s/image = whole CT"
    )
    tasks = [
        task_result("TotalSeg: fast vs seg Dice<0.8", items, "bad", methods, clock, 1, note),
        task_result("TotalSeg: fast vs seg Dice<0.9", items, "bad_0.9", methods, clock, 1, note),
    ]
    return {
        "settings": dataclasses.asdict(s),
        "spacing_mm": list(spacing),
        "split": {
            "fold_slices": folds,
            "note": "each axial slice predicted by the model "
            "trained on the other fold's slices (example_seg labels)",
        },
        "model_dice_to_seg_mean": float(np.mean([it["model_dice_to_seg"] for it in items])),
        "tasks": tasks,
        "items": items,
        "wall_seconds": {"load": load_s, "train": train_s, "methods": clock.seconds},
    }


def lut_inverse(classes: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Class channel -> original label value (0 stays 0)."""
    table = np.asarray([0, *values], np.int64)
    return table[classes].astype(np.uint8)


# --------------------------------------------------------------------------- main


def fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings for development")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench/results/verifier.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        nargs="*",
        choices=("phantoms", "bubil", "totalseg"),
        default=("phantoms", "bubil", "totalseg"),
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    header = run_header()
    start = time.perf_counter()
    ps, bs, ts = (
        quick_settings() if args.quick else (PhantomSettings(), BubilSettings(), TotalsegSettings())
    )
    results: dict[str, Any] = {}
    wall: dict[str, float] = {}
    runners = {
        "phantoms": lambda: run_phantoms(ps, args.seed),
        "bubil": lambda: run_bubil(bs, args.seed),
        "totalseg": lambda: run_totalseg(ts, args.seed),
    }
    for name in args.only:
        t = time.perf_counter()
        results[name] = runners[name]()
        wall[name] = time.perf_counter() - t
        print(f"[{name}] done in {wall[name]:.0f} s", flush=True)
    wall["total"] = time.perf_counter() - start

    rows = []
    summary: dict[str, Any] = {}
    for name in args.only:
        for task in results[name]["tasks"]:
            ceil5, ceil10 = task["sens_ceiling"]["5%"], task["sens_ceiling"]["10%"]
            summary[task["task"]] = {
                "n_items": task["n_items"],
                "n_bad": task["n_bad"],
                "sens_ceiling": task["sens_ceiling"],
                **task["summary"],
            }
            for m, r in task["summary"].items():
                rows.append(
                    [
                        f"{task['task']} (n={task['n_items']}, bad={task['n_bad']}, "
                        f"max sens {ceil5:.2f}/{ceil10:.2f})",
                        METHOD_LABELS[m],
                        fmt(r["auroc"]),
                        fmt(r["sens@5%"]),
                        fmt(r["sens@10%"]),
                        f"{r['s_per_image']:.3f}",
                    ]
                )
    table = format_table(["data set", "method", "AUROC", "sens@5%", "sens@10%", "s/image"], rows)
    print(table)
    print(f"total wall time {wall['total']:.0f} s")
    out = {
        **header,
        "quick": args.quick,
        "seed": args.seed,
        "methods": METHOD_LABELS,
        "definitions": {
            "bad": f"Dice(label, reference) < {BAD_DICE} (per structure / per mask)",
            "sens@budget": "share of bad items among the top ceil(budget * n) by score; ties at "
            "the boundary credited by expected share under random tie-breaking",
            "s_per_image": "wall seconds of the method in this run (its model inference + "
            "scoring; training and population fitting excluded) / judged images",
            "verifier": "LabelVerifier prior mode (PRIOR_WEIGHTS), structure_features over TTA "
            "members (settings 'members': BU-BIL identity + 3 flips; phantoms and TotalSeg "
            "identity + two 2-voxel rolls + intensity x1.1+0.1)",
            "mc_dropout_entropy": "mean predictive entropy of the mean softmax of N dropout "
            "passes (image); per structure: over the predicted region dilated by 2 voxels",
            "one_minus_dice": "1 - Dice(label, deterministic model prediction); image: max "
            "over structures",
        },
        "summary": summary,
        "table": table,
        "results": results,
        "wall_seconds": wall,
    }
    write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
