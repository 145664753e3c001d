"""The annotation campaign through the served app: model quality per human touch.

A simulated annotator drives the real server (``python -m monailabel.main start_server`` on
127.0.0.1) with ``monailabel.client.MONAILabelClient`` only: save 5 human finals (and, in
scenario B, import the noisy labels), then per round train ``em`` (one iteration), run the
served model on held-out test images through ``POST /infer`` (uploaded files: the test
images are never in the datastore), and review the budget: ``next_sample("verifier")`` and
``save_label(..., tag="final")`` with the true mask. The truth is read by this script only,
to play the annotator and to measure.

Arms (the same server, only settings differ): ``verifier`` routing (the strategy with its
default random share), ``random`` routing (the same strategy with ``review_random_share``
1.0), ``none`` (no review); learners ``segmentation`` and ``aide``; the reference is the same
server trained (``segmentation``) on every true label. The first round is the same for every
arm (reviews start after it), so it runs once per learner and seed and each arm continues
from a copy of its studies and model folders.

Per round: touched fraction (finals + reviews) / training images, test Dice of the served
model, mean Dice of the training labels (best label, pseudo-labels included) to the truth,
bad-label fraction (Dice < 0.9), the remaining-errors estimate the server reports, wall time.

    .venv/bin/python bench/campaign.py [--datasets shenzhen,phantoms,bubil] [--seeds 3]
                                       [--rounds 2] [--quick] [--out bench/results/campaign]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BUBIL,
    SHENZHEN,
    format_p,
    format_table,
    object_mask,
    paired_wilcoxon,
    resize_mask,
    run_header,
    write_json,
)
from emlabel.metrics import dice

BAD_DICE = 0.9
"""A training label counts as bad below this Dice to the truth (the app's review_wrong_dice)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Case:
    """One image with its truth and, in scenario B, the noisy label to import."""

    id: str
    image: Path
    truth: Path
    noisy: Path | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dataset:
    """A campaign's data: training pool, held-out test images, server settings."""

    name: str
    train: list[Case]
    test: list[Case]
    conf: dict[str, str]
    dataset_json: dict[str, Any]
    structures: dict[str, int]
    """Structure name -> value in the truth files."""
    epochs: int
    """Training epochs of each M-step and of the reference (enough for the reference to
    learn the data: the 3D phantoms need more than the 2D sets)."""

    @property
    def scenario(self) -> str:
        """``A``: the rest unlabeled; ``B``: the rest carries imported noisy labels."""
        return "B" if any(c.noisy for c in self.train) else "A"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Arm:
    """How reviews are routed (or not) and which learner each M-step trains."""

    routing: str
    """``verifier``, ``random`` or ``none``."""
    learner: str
    doubtful_pseudo_labels: bool | None = None
    """The ``em`` option (None: not sent, the product's default). True also trains on the
    pseudo-labels the E-step doubts; False leaves them out of the M-step."""

    @property
    def name(self) -> str:
        suffix = {None: "", True: "+doubtful", False: "+filter"}[self.doubtful_pseudo_labels]
        return f"{self.routing}/{self.learner}{suffix}"

    @property
    def first_round(self) -> tuple[str, bool | None]:
        """Arms with the same first round (before any review) share it."""
        return self.learner, self.doubtful_pseudo_labels

    @property
    def conf(self) -> dict[str, str]:
        return {"review_random_share": "1.0"} if self.routing == "random" else {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Protocol:
    """Sizes of one run (``--quick`` shrinks them)."""

    rounds: int = 2
    epochs: int | None = None
    """Epochs of every training (None: each data set's own)."""
    n_finals: int = 5
    review_budget: float = 0.02
    """Reviews per round as a fraction of the training images (the app's review_budget)."""
    min_steps_per_epoch: int = 20
    """The app's setting, for every arm and the reference: 5 finals are one batch, and 10
    epochs of one batch leave the first model (and so its pseudo-labels) untrained."""


# ------------------------------------------------------------------ data sets
def _write_png(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def _png_case(root: Path, cid: str, image: Image.Image, truth: np.ndarray,
              noisy: np.ndarray | None, hw: tuple[int, int]) -> Case:  # fmt: skip
    grey = np.asarray(image.convert("L").resize((hw[1], hw[0]), Image.Resampling.BILINEAR))
    return Case(
        id=cid,
        image=_write_png(grey, root / "images" / f"{cid}.png"),
        truth=_write_png(resize_mask(truth, hw), root / "truth" / f"{cid}.png"),
        noisy=None if noisy is None else _write_png(resize_mask(noisy, hw), root / "noisy" / f"{cid}.png"),
    )  # fmt: skip


CONF_2D = {"network_channels": "16,32,64,128", "num_res_units": "1", "train_batch_size": "8"}


def shenzhen(root: Path, *, n_train: int, n_test: int, size: int, seed: int) -> Dataset:
    """Shenzhen chest X-rays, lungs, scenario A (finals + unlabeled images)."""
    paths = sorted((SHENZHEN / "2d_images").glob("*.png"))
    order = np.random.default_rng(seed).permutation(len(paths))[: n_train + n_test]
    cases = []
    for k in order:
        path = paths[int(k)]
        truth = np.asarray(Image.open(SHENZHEN / "2d_masks" / path.name).convert("L")) > 127
        cases.append(_png_case(root, path.stem, Image.open(path), truth, None, (size, size)))
    return Dataset(
        name="shenzhen", train=cases[:n_train], test=cases[n_train:],
        conf=CONF_2D | {"roi_size": f"{size},{size}"},
        dataset_json={"channel_names": {"0": "xray"}, "labels": {"background": 0, "lung": 1},
                      "file_ending": ".png"},
        structures={"lung": 1}, epochs=8,
    )  # fmt: skip


def bubil(root: Path, *, n_test: int, size: int, seed: int) -> Dataset:
    """BU-BIL cells, scenario B: Person3_ImageJ's masks imported as the noisy labels."""
    names = sorted(p.stem for p in (BUBIL / "RawImages").glob("*.png"))
    annotator = BUBIL / "ExpertsAnnotations" / "Person3_ImageJ"
    names = [n for n in names if (annotator / f"seg_{n}.png").exists()]
    order = [names[int(k)] for k in np.random.default_rng(seed).permutation(len(names))]
    hw = (size, round(size * 1.25))
    cases = []
    for i, name in enumerate(order):
        test = i >= len(order) - n_test
        truth = object_mask(BUBIL / "GoldStandard" / f"seg_{name}.png")
        noisy = None if test else object_mask(annotator / f"seg_{name}.png")
        cases.append(_png_case(root, name, Image.open(BUBIL / "RawImages" / f"{name}.png"),
                               truth, noisy, hw))  # fmt: skip
    return Dataset(
        name="bubil", train=cases[:-n_test], test=cases[-n_test:],
        conf=CONF_2D | {"roi_size": f"{hw[0]},{hw[1]}"},
        dataset_json={"channel_names": {"0": "microscopy"}, "labels": {"background": 0, "cell": 1},
                      "file_ending": ".png"},
        structures={"cell": 1}, epochs=8,
    )  # fmt: skip


def phantoms(
    root: Path, *, n_train: int, n_test: int, seed: int, shape: tuple[int, ...]
) -> Dataset:
    """The product's 3D demo phantoms (``emlabel demo``), scenario B: its noisy labels."""
    from emlabel.data.demo import DemoOptions, write_demo_studies
    from emlabel.data.phantoms import PhantomOptions

    demo = root / "demo"
    options = DemoOptions(n=n_train + n_test, seed=seed, n_final=0, n_unlabeled=0,
                          phantom=PhantomOptions(shape=shape))  # fmt: skip
    manifest = write_demo_studies(demo, options)
    cases = [
        Case(id=cid, image=demo / entry["image"], truth=demo / entry["truth"],
             noisy=demo / entry["noisy"] if i < n_train else None)
        for i, (cid, entry) in enumerate(sorted(manifest["cases"].items()))
    ]  # fmt: skip
    labels = {k: v for k, v in manifest["labels"].items() if v}
    return Dataset(
        name="phantoms", train=cases[:n_train], test=cases[n_train:],
        conf={"roi_size": ",".join(map(str, shape)), "network_channels": "8,16,32,64",
              "num_res_units": "0",
              "train_batch_size": "2"},
        dataset_json=json.loads((demo / "dataset.json").read_text()),
        structures=labels, epochs=30,
    )  # fmt: skip


# ------------------------------------------------------------------ the server side
def _read(path: str | Path) -> np.ndarray:
    """A label or mask file (NIfTI or picture) as an integer array."""
    path = str(path)
    if path.endswith((".nii", ".nii.gz")):
        return np.asarray(nib.load(path).dataobj).astype(np.int64)
    return np.asarray(Image.open(path)).astype(np.int64)


def mean_dice(label: np.ndarray, truth: np.ndarray, structures: dict[str, int]) -> float:
    """Mean Dice over the structures present in either (1.0 when none is)."""
    values = [dice(label == v, truth == v) for v in structures.values()
              if (label == v).any() or (truth == v).any()]  # fmt: skip
    return float(np.mean(values)) if values else 1.0


def train(client: Any, model: str, params: dict[str, Any]) -> dict[str, Any]:
    """Start trainer ``model`` and wait; its train stats (RuntimeError if it failed)."""
    from tests.test_server import wait_for_training  # the tests' poll of the train status

    client.train_start(model, params)
    status = wait_for_training(client, timeout=3600)
    if status.get("status") != "DONE":
        raise RuntimeError(f"train {model} ended {status.get('status')}: {status}")
    return client.info()["train_stats"][model]


def test_dice(client: Any, model: str, dataset: Dataset) -> list[float]:
    """Dice of the served model's answer for every test image (uploaded, not in the datastore)."""
    out = []
    for case in dataset.test:
        path, _ = client.infer(model, "", {}, file=str(case.image))
        out.append(mean_dice(_read(path), _read(case.truth), dataset.structures))
        Path(path).unlink(missing_ok=True)
    return out


def label_quality(
    client: Any, dataset: Dataset, seen: dict[tuple, float] | None = None
) -> dict[str, Any]:
    """Per training image, Dice of its best label (pseudo-labels included) to the truth.

    ``seen`` (one campaign's, kept across its rounds) holds the Dice of the versions already
    downloaded, keyed by image, tag and provenance: a stored version never changes, so a
    round downloads only the labels the last one changed (200 downloads took ~25 s a round).
    """
    from emlabel.labels import LabelVersion, Provenance
    from emlabel.labels.resolver import best_version

    seen = {} if seen is None else seen
    objects = client.datastore()["objects"]
    per_image = {}
    for case in dataset.train:
        labels = objects.get(case.id, {}).get("labels", {})
        versions = [LabelVersion(case.id, tag, p) for tag, entry in labels.items()
                    if (p := Provenance.from_info(entry.get("info", {}))) is not None
                    and not p.pending]  # fmt: skip
        best = best_version(versions, include_pseudo=True)
        if best is None:
            per_image[case.id] = {"dice": None, "kind": None}
            continue
        p = best.provenance
        key = (case.id, best.tag, p.version, p.run, p.time)
        if key not in seen:
            path = client.download_label(case.id, best.tag)
            seen[key] = mean_dice(_read(path), _read(case.truth), dataset.structures)
            Path(path).unlink(missing_ok=True)
        per_image[case.id] = {"dice": seen[key], "kind": str(best.kind)}
    dices = [v["dice"] for v in per_image.values() if v["dice"] is not None]
    return {
        "mean_dice": float(np.mean(dices)) if dices else None,
        "bad_fraction": float(np.mean([d < BAD_DICE for d in dices])) if dices else None,
        "labeled": len(dices),
        "per_image": per_image,
    }


def review_budget(client: Any, truth_of: dict[str, Path], log: Callable[[str], None]) -> list[dict]:
    """Play the annotator: take every sample the ``verifier`` strategy offers this round and
    save the true mask as the final; each review's routing and outcome."""
    done = []
    while (sample := client.next_sample("verifier", {})) and sample.get("id"):
        saved = client.save_label(sample["id"], str(truth_of[sample["id"]]), tag="final")
        review = saved.get("review") or {}
        done.append({"id": sample["id"], "routing": sample.get("routing"),
                     "score": sample.get("score"), "was_wrong": review.get("was_wrong"),
                     "dice_to_machine_label": review.get("dice_to_machine_label")})  # fmt: skip
        log(f"    review {sample['id']} ({sample.get('routing')}): wrong={review.get('was_wrong')}")
    return done


# ------------------------------------------------------------------ one campaign
@dataclasses.dataclass(kw_only=True)
class Campaign:
    """One arm's campaign over one data set and seed, in ``work`` (studies + app folders)."""

    dataset: Dataset
    arm: Arm
    protocol: Protocol
    seed: int
    work: Path
    log: Callable[[str], None] = print
    extra_conf: dict[str, str] = dataclasses.field(default_factory=dict)
    """Server settings over the data set's and the arm's (tests: tiny networks)."""
    rounds: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    reviews: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    label_dice_seen: dict[tuple, float] = dataclasses.field(default_factory=dict)
    """Dice to the truth of the label versions measured so far (:func:`label_quality`)."""

    @property
    def studies(self) -> Path:
        return self.work / "studies"

    @property
    def epochs(self) -> int:
        return self.protocol.epochs or self.dataset.epochs

    def finals(self) -> list[str]:
        """The initial finals: ``n_finals`` training images drawn with the seed."""
        ids = sorted(c.id for c in self.dataset.train)
        rng = np.random.default_rng(self.seed)
        return sorted(ids[int(k)] for k in rng.permutation(len(ids))[: self.protocol.n_finals])

    def conf(self) -> dict[str, str]:
        return self.dataset.conf | self.arm.conf | {
            "review_budget": str(self.protocol.review_budget), "seed": str(self.seed),
            "max_epochs": str(self.epochs),
            "min_steps_per_epoch": str(self.protocol.min_steps_per_epoch),
        } | self.extra_conf  # fmt: skip

    def prepare(self) -> None:
        """A studies folder with the training images only (and ``dataset.json``)."""
        self.studies.mkdir(parents=True)
        for case in self.dataset.train:
            suffix = "".join(case.image.suffixes)
            shutil.copy(case.image, self.studies / f"{case.id}{suffix}")
        (self.studies / "dataset.json").write_text(json.dumps(self.dataset.dataset_json))

    def server(self) -> Any:
        from tests.support.server import running_server

        (self.work / "answers").mkdir(parents=True, exist_ok=True)  # the client's downloads
        return running_server(self.studies, self.work, conf=self.conf(), timeout=300)

    def start_labels(self, client: Any) -> None:
        """The 5 finals, and the imported noisy labels in scenario B."""
        finals = set(self.finals())
        for case in self.dataset.train:
            if case.id in finals:
                client.save_label(case.id, str(case.truth), tag="final")
            elif case.noisy is not None:
                client.save_label(case.id, str(case.noisy), tag="noisy")

    def round(self, client: Any, number: int, *, review_after: bool) -> dict[str, Any]:
        """One EM iteration, the measurements, then (``review_after``) the budget's reviews."""
        t0 = time.monotonic()
        params = {"iterations": 1, "epochs": self.epochs, "learner": self.arm.learner,
                  "seed": self.seed}  # fmt: skip
        if self.arm.doubtful_pseudo_labels is not None:
            params["doubtful_pseudo_labels"] = self.arm.doubtful_pseudo_labels
        stats = train(client, "em", params)
        train_s = time.monotonic() - t0
        dices = test_dice(client, self.arm.learner, self.dataset)
        quality = label_quality(client, self.dataset, self.label_dice_seen)
        touched = self.protocol.n_finals + len(self.reviews)
        row = {
            "round": number,
            "touched": touched,
            "touched_fraction": touched / len(self.dataset.train),
            "test_dice": float(np.mean(dices)),
            "test_dice_per_image": dices,
            "label_dice": quality["mean_dice"],
            "bad_label_fraction": quality["bad_fraction"],
            "labeled": quality["labeled"],
            "em": {k: stats["iterations"][-1].get(k) for k in
                   ("accepted", "corrected", "queued", "verifier", "remaining_errors",
                    "e_step_seconds", "m_step_seconds")},
            "operating_point": stats.get("operating_point"),
            "train_seconds": round(train_s, 1),
        }  # fmt: skip
        if review_after and self.arm.routing != "none":
            truth_of = {c.id: c.truth for c in self.dataset.train}
            new = review_budget(client, truth_of, self.log)
            self.reviews += [r | {"after_round": number} for r in new]
            row["reviews"] = new
        row["status"] = client.info().get("emlabel_review")
        row["wall_seconds"] = round(time.monotonic() - t0, 1)
        self.rounds.append(row)
        self.log(
            f"  {self.dataset.name} {self.arm.name} seed {self.seed} round {number}: touched "
            f"{row['touched_fraction']:.3f} test Dice {row['test_dice']:.3f} label Dice "
            f"{row['label_dice']:.3f} bad {row['bad_label_fraction']:.2f} ({row['wall_seconds']} s)"
        )
        return row

    def run_rounds(self, client: Any, *, first: int = 1) -> None:
        """Rounds ``first`` .. ``protocol.rounds``, each followed by its reviews but the last."""
        for number in range(first, self.protocol.rounds + 1):
            self.round(client, number, review_after=number < self.protocol.rounds)

    def result(self) -> dict[str, Any]:
        return {"dataset": self.dataset.name, "scenario": self.dataset.scenario,
                "arm": self.arm.name, "routing": self.arm.routing, "learner": self.arm.learner,
                "seed": self.seed, "finals": self.finals(), "rounds": self.rounds,
                "reviews": self.reviews}  # fmt: skip


def copy_campaign(source: Campaign, *, arm: Arm, work: Path) -> Campaign:
    """A campaign continuing from ``source``'s folders (after its first round) as ``arm``."""
    shutil.copytree(source.work / "studies", work / "studies", symlinks=True)
    shutil.copytree(source.work / "app" / "model", work / "app" / "model", symlinks=True)
    return Campaign(dataset=source.dataset, arm=arm, protocol=source.protocol, seed=source.seed,
                    work=work, log=source.log, extra_conf=source.extra_conf,
                    rounds=[dict(r) for r in source.rounds], reviews=list(source.reviews),
                    label_dice_seen=dict(source.label_dice_seen))  # fmt: skip


def run_arms(dataset: Dataset, arms: Sequence[Arm], protocol: Protocol, seed: int,
             work: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:  # fmt: skip
    """Every arm of one data set and seed: round 1 once per learner, then each arm's own."""
    from monailabel.client import MONAILabelClient

    results = []
    for learner, doubtful in dict.fromkeys(a.first_round for a in arms):
        start = Arm(routing="none", learner=learner, doubtful_pseudo_labels=doubtful)
        first = Campaign(dataset=dataset, arm=start, protocol=protocol, seed=seed,
                         work=work / f"{start.name.replace('/', '-')}-round1", log=log)  # fmt: skip
        first.prepare()
        with first.server() as server:
            client = MONAILabelClient(server_url=server.url, tmpdir=str(first.work / "answers"))
            first.start_labels(client)
            first.round(client, 1, review_after=False)
        for arm in (a for a in arms if a.first_round == (learner, doubtful)):
            campaign = copy_campaign(first, arm=arm, work=work / arm.name.replace("/", "-"))
            with campaign.server() as server:
                client = MONAILabelClient(server_url=server.url,
                                          tmpdir=str(campaign.work / "answers"))  # fmt: skip
                if arm.routing != "none":  # the reviews of round 1's budget
                    truth_of = {c.id: c.truth for c in dataset.train}
                    campaign.reviews += [r | {"after_round": 1}
                                         for r in review_budget(client, truth_of, log)]  # fmt: skip
                campaign.run_rounds(client, first=2)
            results.append(campaign.result())
    return results


def full_supervision(dataset: Dataset, protocol: Protocol, seed: int, work: Path,
                     log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """The reference: the same server, every training image's true label as a final."""
    from monailabel.client import MONAILabelClient

    campaign = Campaign(dataset=dataset, arm=Arm(routing="none", learner="segmentation"),
                        protocol=protocol, seed=seed, work=work / "full", log=log)  # fmt: skip
    campaign.prepare()
    t0 = time.monotonic()
    with campaign.server() as server:
        client = MONAILabelClient(server_url=server.url, tmpdir=str(campaign.work / "answers"))
        for case in dataset.train:
            client.save_label(case.id, str(case.truth), tag="final")
        train(client, "segmentation", {"max_epochs": campaign.epochs, "seed": seed})
        dices = test_dice(client, "segmentation", dataset)
    log(f"  {dataset.name} full supervision seed {seed}: test Dice {np.mean(dices):.3f}")
    return {"dataset": dataset.name, "seed": seed, "test_dice": float(np.mean(dices)),
            "test_dice_per_image": dices, "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip


# ------------------------------------------------------------------ report
def at_touched(result: dict[str, Any], fraction: float) -> dict[str, Any] | None:
    """The last round whose touched fraction is <= ``fraction`` (None if none is)."""
    rows = [r for r in result["rounds"] if r["touched_fraction"] <= fraction + 1e-9]
    return rows[-1] if rows else None


def summarize(results: list[dict], references: list[dict], goal_touched: float) -> dict:
    """Per data set and arm: fraction of full supervision at the goal's touched fraction and
    at 10%, and verifier vs random routing (paired over seeds x test images)."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["dataset"] for r in results):
        ref = {r["seed"]: r for r in references if r["dataset"] == name}
        arms: dict[str, Any] = {}
        for arm in dict.fromkeys(r["arm"] for r in results if r["dataset"] == name):
            runs = [r for r in results if r["dataset"] == name and r["arm"] == arm]
            entry: dict[str, Any] = {}
            for label, fraction in (("goal", goal_touched), ("10%", 0.10), ("last", 1.0)):
                ratios, touched = [], []
                for run in runs:
                    row = at_touched(run, fraction)
                    if row is not None and run["seed"] in ref:
                        ratios.append(row["test_dice"] / ref[run["seed"]]["test_dice"])
                        touched.append(row["touched_fraction"])
                entry[label] = {"of_full_supervision": float(np.mean(ratios)) if ratios else None,
                                "touched": float(np.mean(touched)) if touched else None,
                                "seeds": len(ratios)}  # fmt: skip
            arms[arm] = entry
        paired = {}

        def variant(r: dict) -> str:  # the arm's name without its routing
            return r["arm"].split("/", 1)[1]

        for learner in dict.fromkeys(variant(r) for r in results if r["dataset"] == name):
            by = {(r["routing"], r["seed"]): r for r in results
                  if r["dataset"] == name and variant(r) == learner}  # fmt: skip
            seeds = sorted(
                s for (routing, s) in by if routing == "verifier" and ("random", s) in by
            )
            if not seeds:
                continue
            a = [d for s in seeds for d in by[("verifier", s)]["rounds"][-1]["test_dice_per_image"]]
            b = [d for s in seeds for d in by[("random", s)]["rounds"][-1]["test_dice_per_image"]]
            paired[learner] = paired_wilcoxon(a, b) | {"seeds": seeds,
                                                       "verifier_minus_random": float(np.mean(a) - np.mean(b))}  # fmt: skip
        out[name] = {"full_supervision": float(np.mean([r["test_dice"] for r in ref.values()]))
                     if ref else None, "arms": arms, "verifier_vs_random": paired}  # fmt: skip
    return out


def print_tables(summary: dict[str, Any], goal_touched: float) -> str:
    rows = []
    for name, entry in summary.items():
        for arm, values in entry["arms"].items():
            cell = []
            for label in ("goal", "10%", "last"):
                v = values[label]
                cell.append("-" if v["of_full_supervision"] is None else
                            f"{v['of_full_supervision']:.3f} @ {v['touched']:.3f}")  # fmt: skip
            rows.append([name, arm, *cell, values["last"]["seeds"]])
        rows.append([name, "full supervision", f"{entry['full_supervision']:.3f} (test Dice)",
                     "", "", ""])  # fmt: skip
    text = format_table(
        ["data", "arm", f"of full sup. @ <= {goal_touched:.0%} touched", "@ <= 10%", "last round",
         "seeds"], rows,
    )  # fmt: skip
    lines = [text, ""]
    for name, entry in summary.items():
        for learner, p in entry["verifier_vs_random"].items():
            lines.append(f"{name} {learner}: verifier - random test Dice "
                         f"{p['verifier_minus_random']:+.4f}, paired Wilcoxon p = {format_p(p.get('p_value'))} (n = {p.get('n')})")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="shenzhen,phantoms,bubil")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=Protocol.rounds)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of every training (default: each data set's own)",
    )
    parser.add_argument("--learners", default="segmentation,aide")
    parser.add_argument("--routings", default="verifier,random,none")
    parser.add_argument(
        "--doubtful-variants", action="store_true",
        help="also run every segmentation arm with em doubtful_pseudo_labels=true (the "
        "product's default is false)",
    )  # fmt: skip
    parser.add_argument(
        "--other-learners-on", default="phantoms",
        help="data sets on which the learners besides segmentation run (default phantoms: "
        "scenario B, noisy labels, what AIDE is for)",
    )  # fmt: skip
    parser.add_argument(
        "--other-learners-seeds", type=int, default=1,
        help="seeds (the first ones) on which the learners besides segmentation run (default "
        "1: an aide round costs about 3 segmentation rounds)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for development")
    parser.add_argument("--out", default="bench/results/campaign")
    parser.add_argument(
        "--report", metavar="JSON",
        help="only report the run saved in JSON (e.g. stopped early) and exit",
    )  # fmt: skip
    parser.add_argument("--note", default="", help="with --report: a note for the report")
    args = parser.parse_args(argv)
    if args.report:
        return report_saved(Path(args.report), args.note)
    protocol = Protocol(rounds=2 if args.quick else args.rounds,
                        epochs=2 if args.quick else args.epochs,
                        min_steps_per_epoch=2 if args.quick else Protocol.min_steps_per_epoch)  # fmt: skip
    learners = args.learners.split(",")
    routings = args.routings.split(",")
    seg_arms = [Arm(routing=r, learner="segmentation") for r in routings]
    if args.doubtful_variants:
        seg_arms += [dataclasses.replace(a, doubtful_pseudo_labels=True) for a in seg_arms]
    other_arms = [Arm(routing="verifier", learner=k) for k in learners if k != "segmentation"]
    header, started = run_header(), time.monotonic()
    results, references = [], []

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:7.0f} s] {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="emlabel-campaign-") as tmp:
        root = Path(tmp)
        for seed in range(args.seeds):
            for name in args.datasets.split(","):
                data_root = root / f"data-{name}-{seed}"
                dataset = make_dataset(name, data_root, seed=seed, quick=args.quick)
                log(f"{name} seed {seed}: {len(dataset.train)} training, {len(dataset.test)} "
                    f"test images, scenario {dataset.scenario}")  # fmt: skip
                work = root / f"run-{name}-{seed}"
                references.append(full_supervision(dataset, protocol, seed, work, log))
                others = (
                    name in args.other_learners_on.split(",") and seed < args.other_learners_seeds
                )
                arms = seg_arms + (other_arms if others else [])
                results += run_arms(dataset, arms, protocol, seed, work, log)
                payload = {**header, "protocol": dataclasses.asdict(protocol),
                           "results": results, "full_supervision": references}  # fmt: skip
                write_json(Path(args.out).with_suffix(".json"), payload)  # after every set
    payload = {**header, "protocol": dataclasses.asdict(protocol), "results": results,
               "full_supervision": references}  # fmt: skip
    print(report(payload, Path(args.out), seconds=round(time.monotonic() - started, 1)))
    return 0


GOAL_TOUCHED = 0.03
"""The goal's share of training images a human touched."""


def report(payload: dict[str, Any], out: Path, *, seconds: float, note: str = "") -> str:
    """Summary, table, JSON, text and PNG of a run's ``payload`` (results so far); the table."""
    summary = summarize(payload["results"], payload["full_supervision"], GOAL_TOUCHED)
    text = print_tables(summary, GOAL_TOUCHED)
    extra = {"seconds": seconds, "summary": summary} | ({"note": note} if note else {})
    write_json(out.with_suffix(".json"), payload | extra)
    out.with_suffix(".txt").write_text(text + f"\n\n{seconds} s\n" + (f"{note}\n" if note else ""))
    plot(payload["results"], payload["full_supervision"], out.with_suffix(".png"))
    return text


def report_saved(path: Path, note: str) -> int:
    """Report a run from the JSON it writes after every data set (e.g. a run stopped early);
    its wall time is from its start to the file's last write."""
    import datetime

    payload = json.loads(path.read_text())
    started = datetime.datetime.fromisoformat(payload["started"])
    written = datetime.datetime.fromtimestamp(path.stat().st_mtime, tz=datetime.UTC)
    print(report(payload, path, seconds=round((written - started).total_seconds(), 1), note=note))
    return 0


def make_dataset(name: str, root: Path, *, seed: int, quick: bool) -> Dataset:
    """The campaign's data set ``name`` (``--quick``: a few small images)."""
    if name == "shenzhen":
        return shenzhen(root, n_train=40 if quick else 200, n_test=10 if quick else 40,
                        size=64 if quick else 96, seed=seed)  # fmt: skip
    if name == "bubil":
        return bubil(root, n_test=7, size=64 if quick else 96, seed=seed)
    if name == "phantoms":
        return phantoms(root, n_train=10 if quick else 30, n_test=3 if quick else 6, seed=seed,
                        shape=(32, 32, 24) if quick else (40, 40, 32))  # fmt: skip
    raise SystemExit(f"unknown data set {name!r}; valid: shenzhen, phantoms, bubil")


def plot(results: list[dict], references: list[dict], path: Path) -> None:
    """Test Dice against touched fraction, one panel per data set, one line per arm (mean
    over seeds), the full-supervision level dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in results))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for arm in dict.fromkeys(r["arm"] for r in results if r["dataset"] == name):
            runs = [r for r in results if r["dataset"] == name and r["arm"] == arm]
            n = min(len(r["rounds"]) for r in runs)
            x = [np.mean([r["rounds"][k]["touched_fraction"] for r in runs]) for k in range(n)]
            y = [np.mean([r["rounds"][k]["test_dice"] for r in runs]) for k in range(n)]
            ax.plot(x, y, marker="o", label=arm)
        full = [r["test_dice"] for r in references if r["dataset"] == name]
        if full:
            ax.axhline(float(np.mean(full)), linestyle="--", color="k", label="full supervision")
        ax.set(title=name, xlabel="training images touched by a human", ylabel="test Dice")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
