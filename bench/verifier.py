"""Benchmark: label-error detectors -- EMLabel's verifiers vs the peers, same labels, same run.

Detectors, all driven by one small UNet per data set (trained on clean / reference labels of
images that are *not* judged, except on Shenzhen, see 4.) and compared on the same labels in
the same run:

(e) ``learned``: the learned verifier (:func:`emlabel.verify.learned.train_learned_verifier`),
    trained self-supervised on the data set's trusted labels (clean training labels, the
    held-out population, BU-BIL's gold of the training and population images, one fold of
    TotalSegmentator's reference slices to judge the other fold, Shenzhen's 5 clean labels) with the model's softmax of each
    structure as ``model_maps``; P(wrong) per structure. ``learned_nomodel``: the same,
    trained and scored with ``model_maps=None`` (no segmentation model at all): two trainings
    per data set (four on TotalSegmentator, two folds), each with the library's default
    options except the settings' ``learned_steps`` (phantoms, 3D: 150 of 300; ``--quick``: a
    few steps with ``quick=True``) and ``learned_validation_fraction``. The arms are skipped
    (and say why in the JSON) when the module is not importable or fails.
(a) ``verifier``: :class:`emlabel.verify.LabelVerifier` in prior mode (hand-set weights, no
    reviews) over :func:`emlabel.verify.structure_features` computed from an ensemble of the
    model's test-time-augmented predictions (BU-BIL and Shenzhen: identity + 3 flips; phantoms
    and CT, whose anatomy is not mirror-symmetric: identity + two 2-voxel rolls + an intensity
    jitter), with a :class:`emlabel.verify.ShapePopulation` fitted on the clean *training*
    labels (their features use the model's predictions on its own training images). Variants:
    ``verifier_heldout_pop`` (population fitted on a few clean labels the model never saw),
    ``verifier_shape_only`` (no model: volume / components / containment / intensity against
    the population).
(d) ``cleanlab``: ``cleanlab.segmentation.rank.get_label_quality_scores(labels, pred_probs,
    method="softmin")`` on the model's (deterministic) softmax; per structure a binary problem
    (structure vs rest: probabilities ``[1 - p, p]``); doubt = 1 - quality. 2D images are one
    cleanlab image each; 3D volumes are scored slice by slice (every axial slice, the last
    axis, is one cleanlab image) and the structure's quality is the **min over slices** (its
    worst slice; slices without the structure in label or probabilities score ~1 and do not
    matter).
(b) ``mc_dropout_entropy``: MONAI Label's epistemic scoring idea. 10 stochastic passes with
    dropout on, predictive entropy of the mean softmax, averaged over voxels. It ignores the
    label. Per structure: mean entropy over the model's predicted region of the structure
    (dilated by 2 voxels) -- still label-free.
(c) ``one_minus_dice``: MONAI Label's ``dice`` scoring idea: 1 - Dice(label, model prediction).

Per image "any corruption" (phantoms): max over structures for every per-structure detector
(learned, verifier, cleanlab, 1 - Dice), mean entropy of the image for MC dropout.

Scores are ranked (higher = more doubtful). Reported per data set and method: AUROC
(:func:`emlabel.verify.roc_curve`), sensitivity at 5% / 10% review budgets (the top
``ceil(f * n)`` items by score are flagged; an item tie at the budget boundary is credited by
its expected share under random tie-breaking), wall seconds per judged image (model inference
of that method + its scoring, measured in this run; training of the UNet and of the learned
verifier is shared and reported separately) and the cost ratio: those seconds / the seconds of
one deterministic prediction of the same image (the identity pass, measured in the same run).

Data sets (``/work/shared/data``):

1. Demo phantoms (``make_phantom``, small shape): the model is trained on the clean labels of
   the first phantoms, a few more clean labels form the held-out population, about half of the
   rest get ``corrupt_label`` noise. Per structure "bad" = Dice(label, truth) < 0.8; per image:
   "any corruption". Learned verifier: trusted = training + population labels (3D).
2. BU-BIL Dataset1: the model is trained on the gold standard of a fixed random subset of the
   images; every Person1/3/4/5 x Amira/ImageJ mask of the other images is one label to judge
   (Person2 == gold, left out). "Bad" = Dice(mask, gold) < 0.8 at full resolution. Learned
   verifier: trusted = gold of the training + population images. Also, many annotators: the
   STAPLE consensus (``emlabel.labels.consensus.staple``: SimpleITK's ``STAPLEImageFilter``,
   probability >= 0.5; the filter directly when that module is absent) and a majority vote of
   the 4 non-gold experts Person1/3/4/5 with one tool (ImageJ; also Amira), and of all 8
   masks, vs gold at full resolution, against the best single expert (highest mean Dice), the
   mean single expert and the per-image best (an oracle): mean Dice to gold over the images
   where every mask of the set exists (every image; no model involved).
3. TotalSegmentator ``example_ct_sm``: ``example_seg`` is the reference, each structure of
   ``example_seg_fast`` is judged ("bad" = Dice(fast, seg) < 0.8; also < 0.9, the issue's
   threshold, since only one structure fails 0.8). The model is a 2D axial UNet trained on the
   *reference* labels of every other slice (two folds, each slice predicted by the fold that
   did not see it): it learns from the reference labels of neighbouring 3 mm slices of the
   same scan, which favours agreement with the reference. One scan: no shape population (the
   hand-built verifier runs on its default expectations). The learned verifier is 2D and
   two-fold too: the one trained on fold k's reference slices (with the out-of-fold model's
   maps) judges the other fold's slices of ``example_seg_fast``; a structure's P(wrong) is its
   max over the slices where the label or the prediction holds it.
4. Shenzhen chest X-rays at 128 px (lung masks, threshold 127 then resize; ``bench/em_loop.py``'s
   reader): the UNet is trained on 5 clean lung masks (fixed random split), it predicts a pool
   of other images and **those predictions are the labels judged** (pseudo-labels; "bad" =
   Dice(pseudo-label, truth) < 0.9). The judging model is the one EM's next M-step trains: 5
   clean + the pool's pseudo-labels (the 5-label model judging its own predictions would make
   1 - Dice identically 0). Learned verifier:
   trusted = the 5 clean labels (with the model's maps on them).

Goals (issue 19), printed per EMLabel arm against the targets: AUROC >= 0.97 on phantoms "any
corruption", >= 0.85 on BU-BIL, >= 0.90 on TotalSegmentator (Dice < 0.9), >= 0.85 on Shenzhen;
cost <= 2x one prediction; AUROC ahead of cleanlab on the same task. "met" needs all three.

Run ``nice -n 19 .venv/bin/python bench/verifier.py [--quick] [--out PATH]
[--only SET[,SET]]`` from the project root (sets: phantoms, bubil, totalseg, shenzhen).
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
    bubil_gold,
    bubil_names,
    format_table,
    load_grey,
    load_shenzhen,
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
from emlabel.labels.consensus import agreement_with, staple
from emlabel.metrics import dice
from emlabel.verify import LabelVerifier, ShapePopulation, roc_curve, structure_features
from emlabel.verify.budget import review_budget
from emlabel.verify.learned import LearnedVerifierOptions, TrustedLabel, train_learned_verifier

EXPERTS = tuple(f"Person{p}" for p in (1, 3, 4, 5))
TOOLS = ("Amira", "ImageJ")
ANNOTATORS = tuple(f"{p}_{t}" for p in EXPERTS for t in TOOLS)
BAD_DICE = 0.8
SHENZHEN_BAD_DICE = 0.9
BUDGETS = (0.05, 0.10)
SPLIT_SEED = 12345
SETS = ("phantoms", "bubil", "totalseg", "shenzhen")
PREDICTION = "_one_prediction"
"""Clock key of one deterministic prediction (the identity pass): the cost ratio's unit."""

METHOD_LABELS = {
    "learned": "(e) learned verifier, with model probabilities",
    "learned_nomodel": "(e0) learned verifier, no model",
    "verifier": "(a) verifier, train-label population",
    "verifier_heldout_pop": "(a') verifier, held-out population",
    "verifier_shape_only": "(a0) verifier, shape only (no model)",
    "verifier_annotators": "(a+) verifier + the other experts' masks",
    "annotator_agreement": "(f) 1 - Dice to the other experts (no model)",
    "cleanlab": "(d) cleanlab softmin, 1 - quality",
    "mc_dropout_entropy": "(b) MC-dropout entropy",
    "one_minus_dice": "(c) 1 - Dice(label, pred)",
}
EMLABEL_METHODS = (
    "learned",
    "learned_nomodel",
    "verifier",
    "verifier_heldout_pop",
    "verifier_shape_only",
    "verifier_annotators",
    "annotator_agreement",
)
PEER = "cleanlab"
GOALS = {
    "phantoms": ("phantoms: image any corruption", 0.97),
    "bubil": ("BU-BIL: expert mask Dice<0.8", 0.85),
    "totalseg": ("TotalSeg: fast vs seg Dice<0.9", 0.90),
    "shenzhen": ("Shenzhen: pseudo-label Dice<0.9", 0.85),
}
"""Per data set: the task the issue's AUROC target applies to, and the target."""
COST_GOAL = 2.0
MEMBERS_2D_FLIPS: tuple[Member, ...] = (
    ("flip", ()),
    ("flip", (0,)),
    ("flip", (1,)),
    ("flip", (0, 1)),
)
"""TTA members (identity first) of the mirror-tolerant 2D sets; the models train with flips."""


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
    learned_quick: bool = False
    """``LearnedVerifierOptions(quick=...)`` (a quarter of ``learned_steps``)."""
    learned_steps: int | None = 150
    """``LearnedVerifierOptions(steps=...)``; None = the library's default (300). A 3D step
    (32^3 grid) costs ~0.65 s on 2 idle cores, 10x a 2D step: half the default keeps the two
    phantom arms near 3.5 min."""
    learned_validation_fraction: float | None = None


@dataclasses.dataclass(frozen=True)
class BubilSettings:
    height: int = 256
    width: int = 320
    n_train: int = 12
    n_population: int = 3
    n_judged_images: int | None = None
    """None = every image not used for training or the population."""
    train: Train = Train(steps=400, batch_size=4, channels=(16, 32, 64, 128, 256))  # noqa: RUF009 (Train is frozen)
    members: tuple[Member, ...] = MEMBERS_2D_FLIPS
    """TTA members (identity first); the model is trained with random flips."""
    learned_quick: bool = False
    learned_steps: int | None = None
    """``LearnedVerifierOptions(steps=...)``; None = the library's default (300)."""
    learned_validation_fraction: float | None = None
    consensus_tool_sets: tuple[tuple[str, ...], ...] = (("ImageJ",), ("Amira",), TOOLS)
    """STAPLE of Person1/3/4/5 with these tools (one tool: 4 masks; both: 8)."""
    consensus_images: int | None = None
    """None = every BU-BIL image (no model involved)."""


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
    learned_quick: bool = False
    learned_steps: int | None = None
    """Per fold and arm (4 trainings, 15 slices each); None = the library's default (300)."""
    learned_validation_fraction: float | None = 0.05
    """One held-out slice for the library's own check (unused here): it scores all 41
    structures for every candidate, ~40 s per training with the default 3 slices."""


@dataclasses.dataclass(frozen=True)
class ShenzhenSettings:
    size: int = 128
    n_clean: int = 5
    n_pool: int = 100
    train: Train = Train(steps=300, batch_size=5, channels=(16, 32, 64, 128))  # noqa: RUF009 (Train is frozen)
    """The 5-label model (batch = the 5 clean images, random flips)."""
    members: tuple[Member, ...] = MEMBERS_2D_FLIPS
    learned_quick: bool = False
    learned_steps: int | None = None
    """``LearnedVerifierOptions(steps=...)``; None = the library's default (300)."""
    learned_validation_fraction: float | None = None


def quick_settings() -> tuple[PhantomSettings, BubilSettings, TotalsegSettings, ShenzhenSettings]:
    return (
        PhantomSettings(
            n=14,
            n_train=4,
            n_population=3,
            shape=(32, 32, 24),
            train=Train(steps=30, batch_size=2, channels=(8, 16, 32), mc_passes=4),
            learned_quick=True,
            learned_steps=20,
        ),
        BubilSettings(
            height=128,
            width=160,
            n_train=4,
            n_population=3,
            n_judged_images=4,
            train=Train(steps=30, batch_size=4, channels=(8, 16, 32, 64), mc_passes=4),
            learned_quick=True,
            learned_steps=40,
            consensus_images=6,
        ),
        TotalsegSettings(
            train=Train(steps=30, batch_size=4, channels=(8, 16, 32, 64), mc_passes=4),
            learned_quick=True,
            learned_steps=20,
        ),
        ShenzhenSettings(
            n_pool=24,
            train=Train(steps=40, batch_size=5, channels=(8, 16, 32, 64), mc_passes=4),
            learned_quick=True,
            learned_steps=40,
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


# --------------------------------------------------------------------------- peers


def cleanlab_doubt(
    label: np.ndarray, probs: np.ndarray, structures: Mapping[str, tuple[int, int]]
) -> dict[str, float]:
    """1 - cleanlab's softmin label quality per structure (binary: structure vs rest).

    ``label``: integer map [*S] (2D or 3D); ``probs``: softmax [C, *S]; ``structures``: name ->
    (label value, probability channel). 2D: one cleanlab image. 3D: every axial slice (last
    axis) is one cleanlab image and the structure's quality is the min over its slices.
    """
    from cleanlab.segmentation.rank import get_label_quality_scores

    lab = np.asarray(label)
    if lab.ndim == 2:
        lab, pr = lab[None], np.asarray(probs)[:, None]
    elif lab.ndim == 3:
        lab, pr = np.moveaxis(lab, -1, 0), np.moveaxis(np.asarray(probs), -1, 1)
    else:
        raise ValueError(f"label must be 2D or 3D, got shape {lab.shape}")
    out = {}
    for name, (value, channel) in structures.items():
        p = np.clip(pr[channel], 0.0, 1.0)
        pred_probs = np.stack([1.0 - p, p], axis=1)  # [N, 2, H, W]
        quality, _ = get_label_quality_scores(
            (lab == value).astype(np.int64), pred_probs, method="softmin", verbose=False
        )
        out[name] = 1.0 - float(np.min(quality))
    return out


Trusted = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]
"""(image [C, *S] float32 as the model sees it, label [*S] int, structure -> probability map)."""


class LearnedArms:
    """The two learned-verifier arms of one data set: with the model's maps, and no model.

    Trains both on ``trusted`` at construction (seconds kept in ``info``).
    """

    ARMS = ("learned", "learned_nomodel")

    def __init__(
        self,
        trusted: Sequence[Trusted],
        label_map: Mapping[str, int],
        *,
        quick: bool,
        overrides: Mapping[str, Any],
        seed: int,
        tag: str,
    ) -> None:
        self.tag = tag
        self.verifiers: dict[str, Any] = {}
        self.info: dict[str, Any] = {
            "n_trusted": len(trusted),
            "options_quick": quick,
            "train_seconds": {},
        }
        for arm in self.ARMS:
            t = time.perf_counter()
            items = [
                TrustedLabel(image=img, label=lab, model_maps=maps if arm == "learned" else None)
                for img, lab, maps in trusted
            ]
            options = LearnedVerifierOptions(seed=seed, quick=quick, **overrides)
            self.info.setdefault("options", repr(options))
            self.info.setdefault("effective_steps", options.effective_steps)
            self.verifiers[arm] = train_learned_verifier(
                items, label_map=dict(label_map), options=options
            )
            self.info["train_seconds"][arm] = time.perf_counter() - t
            validation = self.verifiers[arm].validation
            self.info.setdefault("validation", {})[arm] = {
                k: v for k, v in validation.items() if k != "cases"
            }
            log(
                f"{tag}: learned verifier '{arm}' trained in "
                f"{self.info['train_seconds'][arm]:.0f} s on {len(items)} trusted labels"
            )

    def score(
        self,
        clock: Clock,
        image: np.ndarray,
        label: np.ndarray,
        maps: Mapping[str, np.ndarray],
    ) -> dict[str, dict[str, float]]:
        """Arm -> structure -> P(wrong); each arm's scoring time goes to its clock."""
        out: dict[str, dict[str, float]] = {}
        for arm, v in self.verifiers.items():
            model_maps = dict(maps) if arm == "learned" else None
            out[arm] = clock.run(
                [arm],
                lambda v=v, mm=model_maps: {
                    k: float(p) for k, p in v.score(image, label, model_maps=mm).items()
                },
            )
        return out


def learned_overrides(s: Any) -> dict[str, Any]:
    """``LearnedVerifierOptions`` fields a data set's settings set (None = library default)."""
    out = {"steps": s.learned_steps, "validation_fraction": s.learned_validation_fraction}
    return {k: v for k, v in out.items() if v is not None}


def structure_maps(probs: np.ndarray, channels: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Structure name -> its softmax channel (float32, [*S]) of a [C, *S] probability map."""
    return {n: np.ascontiguousarray(probs[c], dtype=np.float32) for n, c in channels.items()}


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


def methods_of(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """The methods (in METHOD_LABELS order) that scored every item."""
    return [m for m in METHOD_LABELS if items and all(m in it["scores"] for it in items)]


def task_result(
    name: str,
    items: list[dict[str, Any]],
    bad_key: str,
    methods: Sequence[str] | None,
    clock: Clock,
    n_images: int,
    note: str,
) -> dict[str, Any]:
    present = methods_of(items)
    methods = present if methods is None else [m for m in methods if m in present]
    bad = [bool(it[bad_key]) for it in items]
    scores = {m: [float(it["scores"][m]) for it in items] for m in methods}
    summary = evaluate(scores, bad)
    prediction_s = clock.seconds.get(PREDICTION, math.nan) / max(1, n_images)
    for m in methods:
        summary[m]["s_per_image"] = clock.seconds.get(m, math.nan) / max(1, n_images)
        summary[m]["s_per_item"] = clock.seconds.get(m, math.nan) / max(1, len(items))
        summary[m]["cost_ratio"] = summary[m]["s_per_image"] / prediction_s
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
        "one_prediction_s_per_image": prediction_s,
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
    cl_structures = {n: (v, v) for n, v in values.items()}

    def members_of(i: int) -> tuple[list[np.ndarray], np.ndarray, float, float]:
        """Member label maps (identity first), the identity softmax, the time of identity /
        other passes."""
        a = time.perf_counter()
        probs = predict_members(model, x[i], s.members[:1])
        b = time.perf_counter()
        probs += predict_members(model, x[i], s.members[1:])
        c = time.perf_counter()
        probs = [p[(slice(None), *crop)] for p in probs]
        maps = [p.argmax(0).astype(np.uint8) for p in probs]
        return maps, probs[0], b - a, c - b

    # Populations: clean training labels (features with the model's predictions on its own
    # training images) and held-out clean labels (never trained on). The same clean labels,
    # with the model's softmax, are the learned verifier's trusted labels.
    t2 = time.perf_counter()
    trusted: list[Trusted] = []

    def clean_features(i: int) -> list[Any]:
        p = phantoms[i]
        maps, probs, _, _ = members_of(i)
        trusted.append(
            (norm_hu(p.image)[None], p.label.astype(np.int64), structure_maps(probs, values))
        )
        return list(
            structure_features(
                p.label,
                maps,
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
    learned = LearnedArms(
        trusted,
        labels_map,
        quick=s.learned_quick,
        overrides=learned_overrides(s),
        seed=seed,
        tag="phantoms",
    )

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
        maps, probs, t_id, t_flip = members_of(i)
        pred = maps[0]
        clock.add(
            [PREDICTION, "verifier", "verifier_heldout_pop", "one_minus_dice", PEER, "learned"],
            t_id,
        )
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
        c_scores = clock.run(
            [PEER], lambda label=label, probs=probs: cleanlab_doubt(label, probs, cl_structures)
        )
        l_scores = learned.score(
            clock, norm_hu(p.image)[None], label.astype(np.int64), structure_maps(probs, values)
        )

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
                        PEER: c_scores[n],
                        **{arm: sc[n] for arm, sc in l_scores.items() if n in sc},
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
                    PEER: max(c_scores.values()),
                    **{arm: max(sc.values()) for arm, sc in l_scores.items() if sc},
                },
            }
        )
    n_img = len(judged)
    tasks = [
        task_result(
            "phantoms: structure Dice<0.8",
            struct_items,
            "bad",
            None,
            clock,
            n_img,
            "per structure of each judged phantom label; s/image = per phantom",
        ),
        task_result(
            "phantoms: image any corruption",
            image_items,
            "any_corruption",
            None,
            clock,
            n_img,
            "image score = max over structures (learned, verifier, cleanlab, 1-Dice); mean "
            "entropy (MC)",
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
            "learned_trusted": train_idx + pop_idx,
        },
        "model_dice_to_truth_on_judged": model_dice,
        "population_typical_dice": _typical_dice(population, names),
        "population_heldout_typical_dice": _typical_dice(population_heldout, names),
        "learned_verifier": learned.info,
        "tasks": tasks,
        "items": {"structures": struct_items, "images": image_items},
        "wall_seconds": {
            "generate": gen_s,
            "train": train_s,
            "populations": population_s,
            "learned_train": learned.info["train_seconds"],
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
    names = bubil_names()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(names))
    train = sorted(names[i] for i in order[: s.n_train])
    pop = sorted(names[i] for i in order[s.n_train : s.n_train + s.n_population])
    judged = sorted(names[i] for i in order[s.n_train + s.n_population :])
    if s.n_judged_images is not None:
        judged = judged[: s.n_judged_images]
    image = {n: load_grey(BUBIL / "RawImages" / f"{n}.png", hw) for n in train + pop + judged}
    gold_full = {n: bubil_gold(n) for n in image}
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
    channels = {"cell": 1}
    spacing = (1.0, 1.0)  # pixels of the resized grid
    verifier = LabelVerifier()

    def members_of(n: str) -> tuple[list[np.ndarray], np.ndarray, float, float]:
        a = time.perf_counter()
        probs = predict_members(model, image[n][None], s.members[:1])
        b = time.perf_counter()
        probs += predict_members(model, image[n][None], s.members[1:])
        c = time.perf_counter()
        return [p.argmax(0).astype(np.uint8) for p in probs], probs[0], b - a, c - b

    t2 = time.perf_counter()
    trusted: list[Trusted] = []

    def clean_features(names_: Sequence[str]) -> list[Any]:
        out = []
        for n in names_:
            maps, probs, _, _ = members_of(n)
            trusted.append(
                (image[n][None], gold[n].astype(np.int64), structure_maps(probs, channels))
            )
            out += structure_features(
                gold[n].astype(np.uint8),
                maps,
                spacing=spacing,
                labels=labels_map,
                image=image[n],
                containment={},
                image_id=n,
            ).values()
        return out

    population = ShapePopulation.fit(clean_features(train))
    population_heldout = ShapePopulation.fit(clean_features(pop))
    population_s = time.perf_counter() - t2
    learned = LearnedArms(
        trusted,
        labels_map,
        quick=s.learned_quick,
        overrides=learned_overrides(s),
        seed=seed,
        tag="bubil",
    )

    clock = Clock()
    items: list[dict[str, Any]] = []
    model_dice = {}
    for n in judged:
        maps, probs, t_id, t_flip = members_of(n)
        pred = maps[0].astype(bool)
        model_dice[n] = float(dice(pred, gold[n]))
        ensemble = ["verifier", "verifier_heldout_pop", "verifier_annotators"]
        clock.add([PREDICTION, *ensemble, "one_minus_dice", PEER, "learned"], t_id)
        clock.add(ensemble, t_flip)
        prob_maps = structure_maps(probs, channels)

        def mc(n: str = n) -> float:
            return float(
                entropy_map(mc_dropout_probs(model, image[n][None], s.train.mc_passes)).mean()
            )

        mc_score = clock.run(["mc_dropout_entropy"], mc)
        expert_masks = {}
        for who in ANNOTATORS:
            path = BUBIL / "ExpertsAnnotations" / who / f"seg_{n}.png"
            if not path.exists():  # some annotators skipped images
                continue
            full = object_mask(path)
            if full.shape == gold_full[n].shape:
                expert_masks[who] = full
        resized = {who: resize_mask(m, hw).astype(np.uint8) for who, m in expert_masks.items()}
        for who, full in expert_masks.items():
            truth_dice = float(dice(full, gold_full[n]))
            label = resized[who]
            # many annotators: the other experts' masks of this image (not the same person's
            # other tool), with the label itself so that agreement leaves its own copy out
            person = who.split("_")[0]
            others = [m for w, m in resized.items() if w.split("_")[0] != person]
            annotations = [label, *others] if others else []

            def feats_annotators(
                label: np.ndarray = label,
                maps: list[np.ndarray] = maps,
                n: str = n,
                annotations: list[np.ndarray] = annotations,
            ) -> Any:
                return structure_features(
                    label, maps, spacing=spacing, labels=labels_map, image=image[n],
                    containment={}, annotations=annotations,
                )  # fmt: skip

            a_feats = clock.run(["verifier_annotators"], feats_annotators)
            a_probs, _, _ = clock.run(
                ["verifier_annotators"],
                lambda f=a_feats: verifier_scores(verifier, f, population),
            )
            agree = clock.run(
                ["annotator_agreement"],
                lambda label=label, annotations=annotations: (
                    agreement_with(label, annotations, labels_map)["cell"]
                    if len(annotations) >= 2
                    else None
                ),
            )

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
            c_score = clock.run(
                [PEER],
                lambda label=label, probs=probs: cleanlab_doubt(label, probs, {"cell": (1, 1)}),
            )["cell"]
            l_scores = learned.score(clock, image[n][None], label.astype(np.int64), prob_maps)
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
                        "verifier_annotators": a_probs["cell"],
                        "annotator_agreement": 1.0 - (1.0 if agree is None else agree),
                        "mc_dropout_entropy": mc_score,
                        "one_minus_dice": d_score,
                        PEER: c_score,
                        **{arm: sc["cell"] for arm, sc in l_scores.items() if "cell" in sc},
                    },
                }
            )
    tasks = [
        task_result(
            "BU-BIL: expert mask Dice<0.8",
            items,
            "bad",
            None,
            clock,
            len(judged),
            "each Person1/3/4/5 x Amira/ImageJ mask of a judged image is one item; "
            "s/image = per raw image (its 8 masks)",
        )
    ]
    t3 = time.perf_counter()
    consensus = bubil_consensus(s)
    consensus_s = time.perf_counter() - t3
    return {
        "settings": dataclasses.asdict(s),
        "split": {
            "train_gold": train,
            "population_heldout_gold": pop,
            "judged": judged,
            "learned_trusted_gold": train + pop,
        },
        "model_dice_to_gold_on_judged": model_dice,
        "model_dice_mean": float(np.mean(list(model_dice.values()))),
        "population_typical_dice": _typical_dice(population, ["cell"]),
        "population_heldout_typical_dice": _typical_dice(population_heldout, ["cell"]),
        "learned_verifier": learned.info,
        "tasks": tasks,
        "consensus": consensus,
        "items": items,
        "wall_seconds": {
            "load": load_s,
            "train": train_s,
            "populations": population_s,
            "learned_train": learned.info["train_seconds"],
            "consensus": consensus_s,
            "methods": clock.seconds,
        },
    }


def bubil_consensus(s: BubilSettings) -> dict[str, Any]:
    """STAPLE of Person1/3/4/5 (per tool set) vs gold, against the best and the mean expert.

    Full resolution, every BU-BIL image (or the first ``consensus_images``) on which every
    mask of the set exists with the gold's shape. Dice to gold, mean over those images.
    """
    how = "emlabel.labels.consensus.staple"
    names = bubil_names()
    if s.consensus_images is not None:
        names = names[: s.consensus_images]
    gold = {n: bubil_gold(n) for n in names}
    expert: dict[tuple[str, str], np.ndarray] = {}  # (image, annotator) -> mask, when usable
    for n in names:
        for w in ANNOTATORS:
            path = BUBIL / "ExpertsAnnotations" / w / f"seg_{n}.png"
            if path.exists():
                m = object_mask(path)
                if m.shape == gold[n].shape:
                    expert[n, w] = m
    out: dict[str, Any] = {
        "staple": how,
        "majority": "voxel-wise vote, foreground where more than half the masks say so",
        "sets": {},
    }
    for tools in s.consensus_tool_sets:
        who = [f"{p}_{t}" for p in EXPERTS for t in tools]
        per_image: dict[str, dict[str, float]] = {}
        for n in names:
            if not all((n, w) in expert for w in who):
                continue
            masks = [expert[n, w] for w in who]
            row = {w: float(dice(m, gold[n])) for w, m in zip(who, masks, strict=True)}
            row["staple"] = float(dice(staple(masks), gold[n]))
            row["majority"] = float(dice(np.mean(masks, axis=0) > 0.5, gold[n]))
            per_image[n] = row
        key = "+".join(tools)
        if not per_image:
            out["sets"][key] = {"annotators": who, "n_images": 0}
            continue
        expert_mean = {w: float(np.mean([r[w] for r in per_image.values()])) for w in who}
        best = max(expert_mean, key=expert_mean.__getitem__)
        out["sets"][key] = {
            "annotators": who,
            "n_images": len(per_image),
            "staple_dice_mean": float(np.mean([r["staple"] for r in per_image.values()])),
            "majority_dice_mean": float(np.mean([r["majority"] for r in per_image.values()])),
            "best_expert": best,
            "best_expert_dice_mean": expert_mean[best],
            "mean_expert_dice_mean": float(np.mean(list(expert_mean.values()))),
            "per_image_best_expert_dice_mean": float(
                np.mean([max(r[w] for w in who) for r in per_image.values()])
            ),
            "expert_dice_mean": expert_mean,
            "per_image": per_image,
        }
        log(
            f"bubil consensus {key}: STAPLE {out['sets'][key]['staple_dice_mean']:.3f}, best "
            f"expert {best} {expert_mean[best]:.3f} ({len(per_image)} images)"
        )
    return out


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
    soft = np.zeros((n_classes, *ct.shape), np.float32)  # identity member's softmax
    mc_probs = np.zeros((n_classes, *ct.shape), np.float32)
    for k, fold in enumerate(folds):
        model = models[1 - k]
        for z in fold:
            for j, member in enumerate(s.members):
                a = time.perf_counter()
                p = predict_members(model, xs[z], [member])[0][crop]
                members[j, :, :, z] = lut_inverse(p.argmax(0), values)
                if j == 0:
                    soft[:, :, :, z] = p
                who = (
                    [PREDICTION, "verifier", "one_minus_dice", PEER, "learned"]
                    if j == 0
                    else ["verifier"]
                )
                clock.add(who, time.perf_counter() - a)
            a = time.perf_counter()
            mc_probs[:, :, :, z] = mc_dropout_probs(model, xs[z], s.train.mc_passes)[crop]
            clock.add(["mc_dropout_entropy"], time.perf_counter() - a)
    pred = members[0]
    labels_map = {f"label_{v}": v for v in values}
    channels = {f"label_{v}": index[v] for v in values}
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
    c_scores = clock.run(
        [PEER],
        lambda: cleanlab_doubt(fast, soft, {f"label_{v}": (v, index[v]) for v in values}),
    )

    def mc() -> dict[int, float]:
        ent = entropy_map(mc_probs)
        mean_pred = lut_inverse(mc_probs.argmax(0), values)
        return {v: region_entropy(ent, mean_pred, v) for v in values}

    mc_scores = clock.run(["mc_dropout_entropy"], mc)

    # The learned verifier, 2D and two-fold: trained on fold k's reference slices (with the
    # maps of the model that did not see them), it judges the other fold's fast slices.
    def slice_of(z: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return xs[z][crop], structure_maps(soft[:, :, :, z], channels)

    learned_info: dict[str, Any] = {}
    slice_scores: dict[str, dict[str, list[tuple[float, int]]]] = {}
    for k, fold in enumerate(folds):
        trusted: list[Trusted] = []
        for z in fold:
            img, maps = slice_of(z)
            trusted.append((img, ref[:, :, z], maps))
        arms = LearnedArms(
            trusted,
            labels_map,
            quick=s.learned_quick,
            overrides=learned_overrides(s),
            seed=seed + k,
            tag=f"totalseg fold {k}",
        )
        learned_info[f"fold_{k}"] = arms.info
        for z in folds[1 - k]:
            img, maps = slice_of(z)
            for arm, sc in arms.score(clock, img, fast[:, :, z], maps).items():
                for v in values:
                    area = int(np.count_nonzero((fast[:, :, z] == v) | (pred[:, :, z] == v)))
                    name = f"label_{v}"
                    if name in sc:
                        slice_scores.setdefault(arm, {}).setdefault(name, []).append(
                            (sc[name], area)
                        )
    learned_arms = [
        arm
        for arm in LearnedArms.ARMS
        if all(f"label_{v}" in slice_scores.get(arm, {}) for v in values)
    ]
    items = []
    for v in values:
        d = float(dice(fast == v, ref == v))
        name = f"label_{v}"
        learned_scores = {a: slice_max(slice_scores[a][name]) for a in learned_arms}
        items.append(
            {
                "structure": name,
                "voxels_seg": int(np.count_nonzero(ref == v)),
                "voxels_fast": int(np.count_nonzero(fast == v)),
                "dice_fast_to_seg": d,
                "model_dice_to_seg": float(dice(pred == v, ref == v)),
                "bad": d < BAD_DICE,
                "bad_0.9": d < 0.9,
                "verifier_detail": v_reasons[name],
                "learned_area_weighted_mean": {
                    a: slice_weighted_mean(slice_scores[a][name]) for a in learned_arms
                },
                "scores": {
                    "verifier": v_probs[name],
                    "verifier_shape_only": s_probs[name],
                    "mc_dropout_entropy": mc_scores[v],
                    "one_minus_dice": d_scores[v],
                    PEER: c_scores[name],
                    **learned_scores,
                },
            }
        )
    note = (
        "one CT, 41 structures of example_seg_fast judged against example_seg; no shape "
        "population (one scan): verifier uses default expectations; learned verifier 2D, "
        "two-fold, max over slices holding the structure; s/image = whole CT"
    )
    tasks = [
        task_result("TotalSeg: fast vs seg Dice<0.8", items, "bad", None, clock, 1, note),
        task_result("TotalSeg: fast vs seg Dice<0.9", items, "bad_0.9", None, clock, 1, note),
    ]
    return {
        "settings": dataclasses.asdict(s),
        "spacing_mm": list(spacing),
        "split": {
            "fold_slices": folds,
            "note": "each axial slice predicted by the model "
            "trained on the other fold's slices (example_seg labels); the learned verifier of "
            "fold k is trained on fold k's example_seg slices and judges the other fold's",
        },
        "model_dice_to_seg_mean": float(np.mean([it["model_dice_to_seg"] for it in items])),
        "learned_verifier": learned_info,
        "tasks": tasks,
        "items": items,
        "wall_seconds": {
            "load": load_s,
            "train": train_s,
            "learned_train": {
                f"fold_{k}_{arm}": t
                for k in range(len(folds))
                for arm, t in learned_info[f"fold_{k}"]["train_seconds"].items()
            },
            "methods": clock.seconds,
        },
    }


def slice_max(scores: Sequence[tuple[float, int]]) -> float:
    """Max P(wrong) over the slices where the label or the prediction holds the structure
    (area > 0); over every slice when none does."""
    held = [p for p, area in scores if area > 0]
    return float(max(held or [p for p, _ in scores]))


def slice_weighted_mean(scores: Sequence[tuple[float, int]]) -> float:
    """Mean P(wrong) over slices weighted by the structure's area (label or prediction)."""
    weights = [area for _, area in scores]
    if not any(weights):
        return float(np.mean([p for p, _ in scores]))
    return float(np.average([p for p, _ in scores], weights=weights))


def lut_inverse(classes: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Class channel -> original label value (0 stays 0)."""
    table = np.asarray([0, *values], np.int64)
    return table[classes].astype(np.uint8)


# --------------------------------------------------------------------------- 4. Shenzhen


def run_shenzhen(s: ShenzhenSettings, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = load_shenzhen(s.size)
    images = data["images"].numpy().astype(np.float32)
    truth = data["masks"].numpy().astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    clean = [int(i) for i in order[: s.n_clean]]
    pool = [int(i) for i in order[s.n_clean : s.n_clean + s.n_pool]]
    load_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    model = train_unet(
        images[clean], truth[clean], n_classes=2, cfg=s.train, flip_axes=(0, 1), seed=seed
    )
    pseudo_labels = {
        i: predict_members(model, images[i], s.members[:1])[0].argmax(0).astype(np.uint8)
        for i in pool
    }
    # The judge is what EM's M-step trains next: the 5 clean + the pool's pseudo-labels (the
    # 5-label model judging its own predictions would make 1 - Dice identically 0).
    judge = train_unet(
        images[clean + pool],
        np.stack([truth[i] for i in clean] + [pseudo_labels[i] for i in pool]),
        n_classes=2,
        cfg=s.train,
        flip_axes=(0, 1),
        seed=seed + 1,
    )
    train_s = time.perf_counter() - t1
    log(f"shenzhen: 5-label model and judge (5 clean + pseudo-labels) trained in {train_s:.0f} s")
    labels_map = {"lung": 1}
    channels = {"lung": 1}
    spacing = (1.0, 1.0)
    verifier = LabelVerifier()

    def members_of(i: int) -> tuple[list[np.ndarray], np.ndarray, float, float]:
        a = time.perf_counter()
        probs = predict_members(judge, images[i], s.members[:1])
        b = time.perf_counter()
        probs += predict_members(judge, images[i], s.members[1:])
        c = time.perf_counter()
        return [p.argmax(0).astype(np.uint8) for p in probs], probs[0], b - a, c - b

    t2 = time.perf_counter()
    trusted: list[Trusted] = []
    clean_feats = []
    for i in clean:
        maps, probs, _, _ = members_of(i)
        trusted.append((images[i], truth[i], structure_maps(probs, channels)))
        clean_feats += structure_features(
            truth[i].astype(np.uint8),
            maps,
            spacing=spacing,
            labels=labels_map,
            image=images[i][0],
            containment={},
            image_id=data["names"][i],
        ).values()
    population = ShapePopulation.fit(clean_feats)
    population_s = time.perf_counter() - t2
    learned = LearnedArms(
        trusted,
        labels_map,
        quick=s.learned_quick,
        overrides=learned_overrides(s),
        seed=seed,
        tag="shenzhen",
    )

    clock = Clock()
    items: list[dict[str, Any]] = []
    for i in pool:
        maps, probs, t_id, t_flip = members_of(i)
        label = pseudo_labels[i]  # the pseudo-label: the 5-label model's prediction
        pred = maps[0]  # the judge's prediction
        clock.add([PREDICTION, "verifier", "one_minus_dice", PEER, "learned"], t_id)
        clock.add(["verifier"], t_flip)
        truth_dice = float(dice(label > 0, truth[i] > 0))

        feats = clock.run(
            ["verifier"],
            lambda label=label, maps=maps, i=i: structure_features(
                label, maps, spacing=spacing, labels=labels_map, image=images[i][0], containment={}
            ),
        )
        v_probs, v_reasons, _ = clock.run(
            ["verifier"], lambda feats=feats: verifier_scores(verifier, feats, population)
        )

        def shape_only(label: np.ndarray = label, i: int = i) -> Any:
            f = structure_features(
                label, (), spacing=spacing, labels=labels_map, image=images[i][0], containment={}
            )
            return verifier_scores(verifier, f, population)

        s_probs, _, _ = clock.run(["verifier_shape_only"], shape_only)
        d_score = clock.run(
            ["one_minus_dice"], lambda label=label, pred=pred: 1.0 - dice(label > 0, pred > 0)
        )
        c_score = clock.run(
            [PEER],
            lambda label=label, probs=probs: cleanlab_doubt(label, probs, {"lung": (1, 1)}),
        )["lung"]
        mc_score = clock.run(
            ["mc_dropout_entropy"],
            lambda i=i: float(
                entropy_map(mc_dropout_probs(judge, images[i], s.train.mc_passes)).mean()
            ),
        )
        l_scores = learned.score(
            clock, images[i], label.astype(np.int64), structure_maps(probs, channels)
        )
        items.append(
            {
                "image": data["names"][i],
                "dice_to_truth": truth_dice,
                "bad": truth_dice < SHENZHEN_BAD_DICE,
                "verifier_detail": v_reasons["lung"],
                "scores": {
                    "verifier": v_probs["lung"],
                    "verifier_shape_only": s_probs["lung"],
                    "mc_dropout_entropy": mc_score,
                    "one_minus_dice": d_score,
                    PEER: c_score,
                    **{arm: sc["lung"] for arm, sc in l_scores.items() if "lung" in sc},
                },
            }
        )
    pseudo = [it["dice_to_truth"] for it in items]
    tasks = [
        task_result(
            "Shenzhen: pseudo-label Dice<0.9",
            items,
            "bad",
            None,
            clock,
            len(pool),
            "pool predictions of the 5-label model judged by a model trained on the 5 clean + "
            "those pseudo-labels (EM's next M-step); s/image = per pool image",
        )
    ]
    log(
        f"shenzhen: pseudo-labels Dice {np.mean(pseudo):.3f} mean, "
        f"{tasks[0]['n_bad']}/{len(items)} below {SHENZHEN_BAD_DICE}"
    )
    return {
        "settings": dataclasses.asdict(s),
        "split": {
            "clean": [data["names"][i] for i in clean],
            "pool": [data["names"][i] for i in pool],
            "note": f"fixed permutation (seed {SPLIT_SEED}): first n_clean clean, next n_pool pool",
        },
        "pseudo_label_dice": {
            "mean": float(np.mean(pseudo)),
            "median": float(np.median(pseudo)),
            "min": float(np.min(pseudo)),
            "share_below_0.9": float(np.mean(np.asarray(pseudo) < SHENZHEN_BAD_DICE)),
        },
        "population_typical_dice": _typical_dice(population, ["lung"]),
        "learned_verifier": learned.info,
        "tasks": tasks,
        "items": items,
        "wall_seconds": {
            "load": load_s,
            "train": train_s,
            "populations": population_s,
            "learned_train": learned.info["train_seconds"],
            "methods": clock.seconds,
        },
    }


# --------------------------------------------------------------------------- main


def fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def cost_text(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 1 else f"{ratio:.1f}x"


def parse_sets(values: Sequence[str]) -> list[str]:
    """``--only a,b c`` -> [a, b, c] in the canonical order; unknown names are an error."""
    wanted = {v.strip() for token in values for v in token.split(",") if v.strip()}
    unknown = wanted - set(SETS)
    if unknown:
        raise SystemExit(f"--only: unknown set(s) {sorted(unknown)}; choose from {list(SETS)}")
    return [name for name in SETS if name in wanted]


def goal_verdicts(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per data set's goal task and EMLabel arm: AUROC target, cost <= 2x, ahead of cleanlab."""
    out = []
    for name, (task_name, target) in GOALS.items():
        if name not in results:
            continue
        task = next(t for t in results[name]["tasks"] if t["task"] == task_name)
        summary = task["summary"]
        peer = summary.get(PEER, {}).get("auroc")
        for m in EMLABEL_METHODS:
            if m not in summary:
                continue
            auc, cost = summary[m]["auroc"], summary[m]["cost_ratio"]
            checks = {
                "auroc": auc is not None and auc >= target,
                "cost": cost is not None and cost <= COST_GOAL,
                "ahead_of_cleanlab": peer is None or (auc is not None and auc > peer),
            }
            out.append(
                {
                    "data_set": name,
                    "task": task_name,
                    "method": m,
                    "auroc": auc,
                    "auroc_target": target,
                    "cost_ratio": cost,
                    "cost_target": COST_GOAL,
                    "cleanlab_auroc": peer,
                    "checks": checks,
                    "met": all(checks.values()),
                }
            )
    return out


def goal_text(v: Mapping[str, Any]) -> str:
    if v["met"]:
        return "goal met"
    failed = [k.replace("_of_cleanlab", "") for k, ok in v["checks"].items() if not ok]
    return "NOT met (" + ", ".join(failed) + ")"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings for development")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench/results/verifier.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        nargs="+",
        default=[",".join(SETS)],
        metavar="SET[,SET]",
        help=f"data sets to run, comma- or space-separated, from {', '.join(SETS)} (default all)",
    )
    args = parser.parse_args(argv)
    only = parse_sets(args.only)
    torch.set_num_threads(2)
    header = run_header()
    start = time.perf_counter()
    ps, bs, ts, ss = (
        quick_settings()
        if args.quick
        else (PhantomSettings(), BubilSettings(), TotalsegSettings(), ShenzhenSettings())
    )
    results: dict[str, Any] = {}
    wall: dict[str, float] = {}
    runners = {
        "phantoms": lambda: run_phantoms(ps, args.seed),
        "bubil": lambda: run_bubil(bs, args.seed),
        "totalseg": lambda: run_totalseg(ts, args.seed),
        "shenzhen": lambda: run_shenzhen(ss, args.seed),
    }
    for name in only:
        t = time.perf_counter()
        results[name] = runners[name]()
        wall[name] = time.perf_counter() - t
        print(f"[{name}] done in {wall[name]:.0f} s", flush=True)
    wall["total"] = time.perf_counter() - start

    verdicts = goal_verdicts(results)
    verdict_of = {(v["task"], v["method"]): v for v in verdicts}
    rows = []
    summary: dict[str, Any] = {}
    for name in only:
        for task in results[name]["tasks"]:
            ceil5, ceil10 = task["sens_ceiling"]["5%"], task["sens_ceiling"]["10%"]
            summary[task["task"]] = {
                "n_items": task["n_items"],
                "n_bad": task["n_bad"],
                "sens_ceiling": task["sens_ceiling"],
                "one_prediction_s_per_image": task["one_prediction_s_per_image"],
                **task["summary"],
            }
            for m, r in task["summary"].items():
                v = verdict_of.get((task["task"], m))
                if v is not None:
                    goal = goal_text(v)
                elif any(t == task["task"] for t, _ in verdict_of):
                    goal = "peer"
                else:
                    goal = ""
                rows.append(
                    [
                        f"{task['task']} (n={task['n_items']}, bad={task['n_bad']}, "
                        f"max sens {ceil5:.2f}/{ceil10:.2f})",
                        METHOD_LABELS[m],
                        fmt(r["auroc"]),
                        fmt(r["sens@5%"]),
                        fmt(r["sens@10%"]),
                        f"{r['s_per_image']:.3f}",
                        cost_text(r["cost_ratio"]),
                        goal,
                    ]
                )
    headers = ["data set", "method", "AUROC", "sens@5%", "sens@10%", "s/image", "cost", "goal"]
    table = format_table(headers, rows)
    goal_rows = [
        [
            v["task"],
            METHOD_LABELS[v["method"]],
            f"{fmt(v['auroc'])} >= {v['auroc_target']:.2f}: {'yes' if v['checks']['auroc'] else 'no'}",
            f"{cost_text(v['cost_ratio'])} <= {COST_GOAL:.0f}x: "
            f"{'yes' if v['checks']['cost'] else 'no'}",
            f"{fmt(v['cleanlab_auroc'])}: {'yes' if v['checks']['ahead_of_cleanlab'] else 'no'}",
            "goal met" if v["met"] else "NOT met",
        ]
        for v in verdicts
    ]
    goal_table = format_table(
        ["goal task", "method", "AUROC vs target", "cost", "ahead of cleanlab", "goal"], goal_rows
    )
    consensus_table = None
    if "bubil" in results:
        c_rows = []
        for key, c in results["bubil"]["consensus"]["sets"].items():
            if not c.get("n_images"):
                continue
            c_rows.append(
                [
                    f"{key} ({len(c['annotators'])} masks/image)",
                    c["n_images"],
                    fmt(c["staple_dice_mean"]),
                    fmt(c["majority_dice_mean"]),
                    f"{fmt(c['best_expert_dice_mean'])} ({c['best_expert']})",
                    fmt(c["mean_expert_dice_mean"]),
                    fmt(c["per_image_best_expert_dice_mean"]),
                ]
            )
        consensus_table = format_table(
            [
                "BU-BIL Person1/3/4/5, tools",
                "images",
                "STAPLE",
                "majority",
                "best expert",
                "mean expert",
                "per-image best (oracle)",
            ],
            c_rows,
        )
    print(table)
    print()
    print(goal_table)
    if consensus_table is not None:
        print()
        print(f"Dice to gold, mean over images ({results['bubil']['consensus']['staple']}):")
        print(consensus_table)
    print(f"total wall time {wall['total']:.0f} s")
    out = {
        **header,
        "quick": args.quick,
        "seed": args.seed,
        "only": only,
        "methods": METHOD_LABELS,
        "definitions": {
            "bad": f"Dice(label, reference) < {BAD_DICE} (per structure / per mask); Shenzhen "
            f"and TotalSeg 'Dice<0.9': < {SHENZHEN_BAD_DICE}",
            "sens@budget": "share of bad items among the top ceil(budget * n) by score; ties at "
            "the boundary credited by expected share under random tie-breaking",
            "s_per_image": "wall seconds of the method in this run (its model inference + "
            "scoring; training of the UNet / learned verifier and population fitting excluded) "
            "/ judged images",
            "cost_ratio": "s_per_image / seconds of one deterministic prediction (identity "
            "pass) of the same images, same run",
            "learned": "emlabel.verify.learned: train_learned_verifier on the set's trusted "
            "labels with model_maps = the model's softmax per structure; score() P(wrong)",
            "learned_nomodel": "the same, trained and scored with model_maps=None",
            "verifier": "LabelVerifier prior mode (PRIOR_WEIGHTS), structure_features over TTA "
            "members (settings 'members': BU-BIL and Shenzhen identity + 3 flips; phantoms and "
            "TotalSeg identity + two 2-voxel rolls + intensity x1.1+0.1)",
            "cleanlab": "1 - cleanlab.segmentation.rank.get_label_quality_scores(method="
            "'softmin') per structure, binary structure-vs-rest on the deterministic softmax; "
            "3D: min quality over axial slices",
            "mc_dropout_entropy": "mean predictive entropy of the mean softmax of N dropout "
            "passes (image); per structure: over the predicted region dilated by 2 voxels",
            "one_minus_dice": "1 - Dice(label, deterministic model prediction); image: max "
            "over structures",
            "goals": "per EMLabel arm on each set's goal task: AUROC >= target, cost_ratio <= "
            f"{COST_GOAL}, AUROC > cleanlab's; targets {dict(GOALS)}",
        },
        "summary": summary,
        "goals": verdicts,
        "table": table,
        "goal_table": goal_table,
        "consensus_table": consensus_table,
        "results": results,
        "wall_seconds": wall,
    }
    write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
