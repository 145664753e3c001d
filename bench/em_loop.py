"""Benchmark: the EM relabeling loop with a simulated annotator at a 5% review budget (issue 5).

Question: after each EM iteration, how good are the training labels (mean Dice to the truth)
when the review budget goes to the images the **verifier** trusts least, vs **random** images,
vs **no review** at all? And how close is the review fraction the ROC operating point implies
(95% sensitivity) to the oracle's, the true fraction of bad labels?

Data: Shenzhen chest X-rays (``../shared/data/shenzhen``) at 128 px, lung masks as truth.
A fixed random split: 60 test images, 5 clean ("human final") labels, and a pool whose
labels are the truth corrupted with probability ``corrupt_fraction`` by one of: erode or
dilate 3-8 px, shift 6-16 px, drop one lung, add a blob, or replace by an empty mask (the
mistakes of the data README's pilot). A label is **bad** when Dice(label, truth) < 0.9.

One EM iteration (all library code of :mod:`emlabel.verify` and :mod:`emlabel.methods.em`):

1. M-step: a MONAI UNet (DiceCE, Adam, flips; ``common.train_unet``) is trained from
   scratch on the current labels of the clean and pool images.
2. E-step: for every pool image, the model's predictions under 4 test-time flips are the
   ensemble; :func:`structure_features` against the current label, a
   :class:`ShapePopulation` fitted on the clean labels, and :class:`LabelVerifier` give
   P(wrong).
3. Review: ``select_for_review`` (verifier routing), a seeded random draw (random routing),
   or nobody (no review) picks ``ceil(0.05 * pool)`` unreviewed images; the simulated
   annotator replaces each with the truth (a human final label, never changed again) and the
   review (was the label wrong?) is added to the verifier's training set (``fit``).
4. Correction: :func:`emlabel.methods.em.e_step`, the server's own E-step, with the app's
   thresholds; where it says "correct", :class:`LabelExpert` has chosen the model's
   candidate (the voxel-wise majority of the ensemble members) over the current label and
   that candidate becomes the label.

Per strategy and iteration the JSON holds: label Dice to truth (mean, and the bad fraction),
reviews (and how many of them were bad), corrections (and how many improved the label), the
verifier's AUROC on the current labels and its 95%-sensitivity operating point, and the test
Dice of the M-step model. Iteration 0's model and E-step scores are shared by the strategies.

Run ``nice -n 10 .venv/bin/python bench/em_loop.py [--quick] [--out PATH]`` from the
project root.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PROJECT_ROOT,
    Train,
    format_table,
    load_shenzhen,
    predict_members,
    run_header,
    train_unet,
    write_json,
)

from emlabel.methods.em import EMOptions, e_step
from emlabel.metrics import dice
from emlabel.verify import (
    LabelVerifier,
    Review,
    ShapePopulation,
    choose_threshold,
    review_budget,
    roc_curve,
    select_for_review,
    structure_features,
)

LABELS = {"lung": 1}
BAD_DICE = 0.9
SPLIT_SEED = 12345
STRATEGIES = ("verifier", "random", "none")
MEMBERS = (("flip", ()), ("flip", (1,)), ("flip", (0,)), ("flip", (0, 1)))
"""Test-time flips of the 2D image (rows, columns); identity first."""


@dataclasses.dataclass(frozen=True)
class Settings:
    size: int = 128
    n_test: int = 60
    n_clean: int = 5
    n_pool: int = 120
    corrupt_fraction: float = 0.35
    iterations: int = 3
    budget: float = 0.05
    target_sensitivity: float = 0.95
    train: Train = dataclasses.field(
        default_factory=lambda: Train(
            steps=300, batch_size=8, channels=(16, 32, 64, 128), dropout=0.0
        )
    )


def quick_settings() -> Settings:
    return Settings(
        n_test=10,
        n_pool=30,
        iterations=2,
        train=Train(steps=10, batch_size=4, channels=(8, 16, 32), dropout=0.0),
    )


# --------------------------------------------------------------------------- noise


def corrupt(mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One simulated annotation mistake on a binary lung mask; returns (label, what)."""
    kind = str(rng.choice(["erode", "dilate", "shift", "drop", "blob", "empty"]))
    m = mask.astype(bool)
    if kind in ("erode", "dilate"):
        px = int(rng.integers(3, 9))
        op = ndimage.binary_erosion if kind == "erode" else ndimage.binary_dilation
        return op(m, iterations=px).astype(np.int64), f"{kind} {px} px"
    if kind == "shift":
        d = rng.integers(6, 17, size=2) * rng.choice([-1, 1], size=2)
        return ndimage.shift(m.astype(float), d, order=0) > 0.5, f"shift {d.tolist()} px"
    if kind == "drop":
        comps, n = ndimage.label(m)
        if n >= 2:
            sizes = ndimage.sum(m, comps, range(1, n + 1))
            return m & (comps != 1 + int(np.argmax(sizes))), "drop a lung"
        return np.zeros_like(m), "drop the lung"
    if kind == "blob":
        yy, xx = np.ogrid[: m.shape[0], : m.shape[1]]
        cy, cx = rng.integers(10, m.shape[0] - 10, size=2)
        r = int(rng.integers(6, 14))
        return m | ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r), f"blob r={r} px"
    return np.zeros_like(m), "empty"


# --------------------------------------------------------------------------- one E-step


@dataclasses.dataclass
class EStep:
    """What the E-step computed for every pool image."""

    probability: dict[int, float]
    reasons: dict[int, str]
    features: dict[int, Any]
    members: dict[int, list[np.ndarray]]


def gather_evidence(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: dict[int, np.ndarray],
    verifier: LabelVerifier,
    population: ShapePopulation,
) -> EStep:
    """Ensemble predictions, features and verifier P(wrong) of every pool label."""
    out = EStep({}, {}, {}, {})
    for i, label in labels.items():
        probs = predict_members(model, images[i], MEMBERS)
        members = [p.argmax(0) for p in probs]
        feats = structure_features(
            label, members, spacing=(1.0, 1.0), labels=LABELS, containment={}, image_id=str(i)
        )
        verdict = verifier.score_image(feats, population, image_id=str(i))
        out.probability[i] = verdict.probability_wrong
        out.reasons[i] = "; ".join(verdict.reasons[:2])
        out.features[i] = feats["lung"]
        out.members[i] = members
    return out


def label_quality(labels: dict[int, np.ndarray], truth: np.ndarray) -> dict[str, float]:
    d = [dice(labels[i] == 1, truth[i] == 1) for i in labels]
    return {"mean_dice": float(np.mean(d)), "bad_fraction": float(np.mean(np.less(d, BAD_DICE)))}


def test_dice(model: torch.nn.Module, images: np.ndarray, truth: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(images)).argmax(1).numpy()
    return float(np.mean([dice(p == 1, t == 1) for p, t in zip(pred, truth, strict=True)]))


# --------------------------------------------------------------------------- the loop


class Loop:
    """The state of one strategy's EM run."""

    def __init__(self, strategy: str, labels: dict[int, np.ndarray], seed: int) -> None:
        self.strategy = strategy
        self.labels = dict(labels)
        self.reviewed: set[int] = set()
        self.reviews: list[Review] = []
        self.verifier = LabelVerifier()
        self.rng = np.random.default_rng(seed)
        self.history: list[dict[str, Any]] = []


def route(loop: Loop, est: EStep, k: int) -> list[int]:
    """The images this strategy sends to the annotator this iteration."""
    candidates = [i for i in loop.labels if i not in loop.reviewed]
    if loop.strategy == "none" or k == 0:
        return []
    if loop.strategy == "random":
        return [
            int(i) for i in loop.rng.choice(candidates, size=min(k, len(candidates)), replace=False)
        ]
    picked = select_for_review(
        {i: est.probability[i] for i in candidates},
        n_labeled=len(loop.labels),
        budget_fraction=k / len(loop.labels),
    )
    return [int(i) for i in picked[:k]]


def iterate(
    loop: Loop,
    est: EStep,
    truth: np.ndarray,
    population: ShapePopulation,
    options: EMOptions,
    k: int,
) -> dict[str, Any]:
    """Review, refit the verifier, correct: one E-step's actions on ``loop``'s labels."""
    routed = route(loop, est, k)
    n_bad_routed = 0
    for i in routed:
        was_wrong = dice(loop.labels[i] == 1, truth[i] == 1) < BAD_DICE
        n_bad_routed += int(was_wrong)
        loop.reviews.append(Review(features=est.features[i], was_wrong=was_wrong))
        loop.labels[i] = truth[i].copy()
        loop.reviewed.add(i)
    fitted = loop.verifier.fit(loop.reviews, population) if loop.reviews else False
    pending = [i for i in loop.labels if i not in loop.reviewed]
    verdicts = {
        str(i): loop.verifier.score_image({"lung": est.features[i]}, population, image_id=str(i))
        for i in pending
    }
    # the same E-step as the server's ``em`` trainer (emlabel.methods.em.e_step)
    result = e_step(
        labels={str(i): loop.labels[i] for i in pending},
        members={str(i): est.members[i] for i in pending},
        verdicts=verdicts,
        verifier=loop.verifier,
        population=population,
        label_map=LABELS,
        spacing=(1.0, 1.0),
        containment={},
        correct_threshold=options.correct_threshold,
        review_threshold=options.review_threshold,
    )
    corrected = improved = 0
    for image_id, label in result.corrections.items():
        i = int(image_id)
        before = dice(loop.labels[i] == 1, truth[i] == 1)
        loop.labels[i] = label.astype(np.int64)
        corrected += 1
        improved += int(dice(loop.labels[i] == 1, truth[i] == 1) > before)
    return {
        "reviewed": len(routed),
        "reviewed_bad": n_bad_routed,
        "verifier_mode": loop.verifier.mode,
        "verifier_fitted": bool(fitted),
        "corrected": corrected,
        "corrections_improved": improved,
    }


def roc_record(est: EStep, labels: dict[int, np.ndarray], truth: np.ndarray, s: Settings) -> dict:
    """AUROC and the operating point of P(wrong) against the true bad labels."""
    ids = sorted(est.probability)
    scores = [est.probability[i] for i in ids]
    bad = [dice(labels[i] == 1, truth[i] == 1) < BAD_DICE for i in ids]
    point = choose_threshold(scores, bad, target_sensitivity=s.target_sensitivity)
    return {
        "auroc": roc_curve(scores, bad).auc if 0 < sum(bad) < len(bad) else None,
        "oracle_review_fraction": float(np.mean(bad)),
        "operating_point": point.to_dict(),
    }


def log(msg: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def run(s: Settings, seed: int) -> dict[str, Any]:
    data = load_shenzhen(s.size)
    images = data["images"].numpy().astype(np.float32)
    truth = data["masks"].numpy().astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    test = order[: s.n_test]
    clean = [int(i) for i in order[s.n_test : s.n_test + s.n_clean]]
    pool = [int(i) for i in order[s.n_test + s.n_clean : s.n_test + s.n_clean + s.n_pool]]
    rng = np.random.default_rng(seed)
    initial, noise = {}, {}
    for i in pool:
        if rng.random() < s.corrupt_fraction:
            initial[i], noise[i] = corrupt(truth[i], rng)
            initial[i] = np.asarray(initial[i], dtype=np.int64)
        else:
            initial[i], noise[i] = truth[i].copy(), "clean"
    population = ShapePopulation.fit(
        structure_features(truth[i], spacing=(1.0, 1.0), labels=LABELS, containment={})["lung"]
        for i in clean
    )
    options = EMOptions()
    k = review_budget(s.budget, len(pool))
    loops = {name: Loop(name, initial, seed) for name in STRATEGIES}
    shared: tuple[torch.nn.Module, EStep] | None = None
    timings: dict[str, float] = {"train": 0.0, "e_step": 0.0}

    def train(labels: dict[int, np.ndarray]) -> torch.nn.Module:
        start = time.perf_counter()
        ids = clean + pool
        y = np.stack([truth[i] if i in clean else labels[i] for i in ids])
        model = train_unet(images[ids], y, n_classes=2, cfg=s.train, flip_axes=(0, 1), seed=seed)
        timings["train"] += time.perf_counter() - start
        return model

    for it in range(s.iterations + 1):
        for name, loop in loops.items():
            if it == 0 and shared is not None:
                model, est = shared
            else:
                model = train(loop.labels)
                start = time.perf_counter()
                est = gather_evidence(model, images, loop.labels, loop.verifier, population)
                timings["e_step"] += time.perf_counter() - start
                if it == 0:
                    shared = (model, est)
            row: dict[str, Any] = {
                "iteration": it,
                "labels": label_quality(loop.labels, truth),
                "test_dice": test_dice(model, images[test], truth[test]),
                "roc": roc_record(est, loop.labels, truth, s),
                "mean_p_wrong": float(np.mean(list(est.probability.values()))),
            }
            if it < s.iterations:
                row.update(iterate(loop, est, truth, population, options, k))
            loop.history.append(row)
            log(
                f"{name} iteration {it}: label Dice {row['labels']['mean_dice']:.3f} "
                f"(bad {row['labels']['bad_fraction']:.3f}), test {row['test_dice']:.3f}, "
                f"reviewed {row.get('reviewed', '-')} ({row.get('reviewed_bad', '-')} bad), "
                f"corrected {row.get('corrected', '-')}"
            )
    return {
        "seed": seed,
        "split": {"test": test.tolist(), "clean": clean, "pool": pool},
        "noise": {str(i): noise[i] for i in pool},
        "reviews_per_iteration": k,
        "timings_s": timings,
        "strategies": {name: loop.history for name, loop in loops.items()},
    }


def print_tables(res: dict[str, Any]) -> str:
    rows = []
    for name, hist in res["strategies"].items():
        for h in hist:
            op = h["roc"]["operating_point"]
            rows.append(
                [
                    name,
                    h["iteration"],
                    f"{h['labels']['mean_dice']:.3f}",
                    f"{h['labels']['bad_fraction']:.3f}",
                    f"{h['test_dice']:.3f}",
                    "-" if "reviewed" not in h else f"{h['reviewed']} ({h['reviewed_bad']})",
                    "-"
                    if "corrected" not in h
                    else f"{h['corrected']} ({h['corrections_improved']})",
                    "-" if h["roc"]["auroc"] is None else f"{h['roc']['auroc']:.3f}",
                    f"{op['review_fraction']:.3f}",
                    f"{h['roc']['oracle_review_fraction']:.3f}",
                ]
            )
    return format_table(
        [
            "routing",
            "iter",
            "label Dice",
            "bad frac",
            "test Dice",
            "reviewed (bad)",
            "corrected (improved)",
            "AUROC",
            "review frac @95% sens",
            "oracle frac",
        ],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings for development")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench/results/em_loop.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    s = quick_settings() if args.quick else Settings()
    torch.set_num_threads(2)
    header = run_header()
    start = time.perf_counter()
    res = run(s, args.seed)
    wall = time.perf_counter() - start
    print(
        f"EM loop on Shenzhen lungs: {s.n_pool} pool labels ({s.corrupt_fraction:.0%} corrupted), "
        f"{s.n_clean} clean, {res['reviews_per_iteration']} reviews per iteration "
        f"({s.budget:.0%} budget); '(n)' = how many of those were bad / improved"
    )
    print(print_tables(res))
    print(f"total wall time {wall:.0f} s (training {res['timings_s']['train']:.0f} s)")
    write_json(
        args.out,
        {
            **header,
            "settings": dataclasses.asdict(s),
            "quick": args.quick,
            "wall_seconds": wall,
            **res,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
