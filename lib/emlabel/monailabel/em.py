"""EM relabeling in the app: trainer ``em``, scoring and strategy ``verifier``, review records.

The critic (verifier + expert over the current segmentation model's flip ensemble) judges
every non-human best label. Human ``final`` labels are the accepted population the shape
statistics come from, and every human review of a routed image becomes ground truth for
the verifier (``model/em_reviews.json``), from which it is recalibrated or fitted and the
ROC operating point is chosen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from emlabel.atomic import atomic_write_json
from emlabel.checkpoints import load_checkpoint, model_ref
from emlabel.errors import InvalidRequestError
from emlabel.labels import LabelKind, Provenance
from emlabel.labels.provenance import now_iso
from emlabel.methods.em import Decision, EMOptions, decide
from emlabel.metrics import dice
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.tasks import OptionsTrainTask
from emlabel.nets.app import segmentation_unet
from emlabel.settings import AppSettings, settings_to_dict
from emlabel.training.loading import LoadedSet, load_items, to_original_grid
from emlabel.training.supervised import split_items, train_supervised
from emlabel.verify import (
    ImageVerdict,
    LabelExpert,
    LabelVerifier,
    Review,
    ShapePopulation,
    StructureFeatures,
    choose_threshold,
    roc_curve,
    save_roc,
    select_for_review,
    structure_features,
)
from emlabel.verify.budget import budget_report

logger = logging.getLogger(__name__)

VERIFIER_INFO_KEY = "emlabel.verifier"
REVIEW_INFO_KEY = "emlabel.review"
MULTIPLE_OF_UNET = 8


# ----------------------------------------------------------------------------- storage
@dataclasses.dataclass
class EMFiles:
    """Where the EM loop keeps its state beside the models."""

    model_dir: Path

    @property
    def reviews(self) -> Path:
        return self.model_dir / "em_reviews.json"

    @property
    def state(self) -> Path:
        return self.model_dir / "em_state.json"

    @property
    def roc_json(self) -> Path:
        return self.model_dir / "em_roc.json"

    @property
    def roc_png(self) -> Path:
        return self.model_dir / "em_roc.png"

    def read(self, path: Path, default: Any) -> Any:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return default

    def iteration(self) -> int:
        """The last finished EM iteration (0 before any)."""
        return int(self.read(self.state, {}).get("iteration", 0))

    def load_reviews(self) -> list[dict[str, Any]]:
        return list(self.read(self.reviews, []))


def structure_reviews(records: list[dict[str, Any]]) -> list[Review]:
    """Per-structure verifier training examples from the stored image reviews."""
    return [
        Review(features=StructureFeatures.from_dict(s["features"]), was_wrong=bool(s["was_wrong"]))
        for record in records
        for s in record.get("structures", [])
    ]


# ------------------------------------------------------------------------------ critic
@dataclasses.dataclass
class CriticRun:
    """Everything one pass of the critic saw and concluded."""

    data: LoadedSet
    labeled_ids: list[str]
    machine_ids: list[str]
    """Images whose best label is not human: the ones the verifier judges."""
    predictions: dict[str, list[np.ndarray]]
    features: dict[str, dict[str, StructureFeatures]]
    verdicts: dict[str, ImageVerdict]
    population: ShapePopulation
    verifier: LabelVerifier
    tags: dict[str, str]
    """Current best tag of each labeled image."""
    spacing: tuple[float, ...]
    """Voxel spacing (mm) of the grid everything was judged on."""
    label_map: dict[str, int]


class Critic:
    """Verifier and expert over the segmentation model's flip ensemble (one E-step's eyes)."""

    def __init__(self, *, settings: AppSettings, files: EMFiles) -> None:
        self.settings = settings
        self.files = files

    def network(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        net = segmentation_unet(self.settings)
        net.load_state_dict(state)
        return net.eval()

    def ensemble(self, net: torch.nn.Module, image: torch.Tensor) -> list[np.ndarray]:
        """Label maps of the model on the image and its two in-plane flips (undone)."""
        inferer = SlidingWindowInferer(
            roi_size=self.settings.roi_size, sw_batch_size=1, overlap=self.settings.sw_overlap
        )
        members = []
        with torch.no_grad():
            for axes in ((), (2,), (3,)):
                x = torch.flip(image, axes) if axes else image
                logits = inferer(x, net)
                logits = torch.flip(logits, axes) if axes else logits
                members.append(logits.argmax(dim=1)[0].numpy().astype(np.uint8))
        return members

    def run(
        self,
        datastore: VersionedDatastore,
        state: dict[str, torch.Tensor],
        *,
        overlay: dict[str, str] | None = None,
    ) -> CriticRun:
        """Judge every labeled image (``overlay``: image id -> label file replacing its best)."""
        overlay = overlay or {}
        items, tags, human = [], {}, set()
        for image_id in sorted(datastore.list_images()):
            best = datastore.best_label(image_id)
            if best is None and image_id not in overlay:
                continue
            label = overlay.get(image_id) or datastore.get_label_uri(image_id, best.tag)
            tags[image_id] = "pending EM correction" if image_id in overlay else best.tag
            if best is not None and best.kind == LabelKind.HUMAN and image_id not in overlay:
                human.add(image_id)
            items.append(
                {"id": image_id, "image": datastore.require_image(image_id), "label": label}
            )
        if not items:
            raise InvalidRequestError("no labeled images to verify")
        data = load_items(items, settings=self.settings, multiple_of=MULTIPLE_OF_UNET)
        net = self.network(state)
        label_map = self.settings.label_map
        predictions, features = {}, {}
        for i, image_id in enumerate(data.ids):
            predictions[image_id] = self.ensemble(net, data.images[i : i + 1])
            features[image_id] = structure_features(
                data.labels[i].numpy().astype(np.uint8),
                predictions[image_id],
                spacing=self.settings.target_spacing,
                labels=label_map,
                image=data.images[i, 0].numpy(),
                image_id=image_id,
            )
        accepted = [f for i in human for f in features[i].values()]
        if len(human) < 3:
            accepted = [f for fs in features.values() for f in fs.values()]
        population = ShapePopulation.fit(accepted)
        verifier = LabelVerifier()
        verifier.fit(structure_reviews(self.files.load_reviews()), population)
        machine = [i for i in data.ids if i not in human]
        verdicts = {
            i: verifier.score_image(list(features[i].values()), population, image_id=i)
            for i in machine
        }
        return CriticRun(
            data=data,
            labeled_ids=list(data.ids),
            machine_ids=machine,
            predictions=predictions,
            features=features,
            verdicts=verdicts,
            population=population,
            verifier=verifier,
            tags=tags,
            spacing=tuple(self.settings.target_spacing),
            label_map=label_map,
        )


def verifier_info(
    run: CriticRun, image_id: str, *, iteration: int, model: str | None, action: str | None = None
) -> dict[str, Any]:
    """What ``emlabel.verifier`` holds for one image (score, reasons, features for reviews)."""
    verdict = run.verdicts[image_id]
    return {
        "score": round(verdict.probability_wrong, 6),
        "reasons": verdict.reasons[:3],
        "worst_structure": verdict.worst_structure,
        "structures": {
            name: round(v.probability_wrong, 6) for name, v in verdict.structures.items()
        },
        "features": {name: f.to_dict() for name, f in run.features[image_id].items()},
        "label_tag": run.tags[image_id],
        "mode": run.verifier.mode,
        "calibration": run.verifier.fit_message,
        "iteration": iteration,
        "model": model,
        "action": action,
        "time": now_iso(),
    }


# ----------------------------------------------------------------------------- reviews
def record_review(
    datastore: VersionedDatastore, image_id: str, *, settings: AppSettings, files: EMFiles
) -> dict[str, Any] | None:
    """A human ``final`` on a verified image: was the machine label it replaces wrong?

    Compares the new final with the machine label the verifier judged (its tag is in the
    image's ``emlabel.verifier`` info), per structure and overall (mean Dice over the
    structures present in either), and appends the outcome to ``em_reviews.json``.
    """
    image_info = datastore.get_image_info(image_id)
    info = image_info.get(VERIFIER_INFO_KEY)
    routed = image_info.get(REVIEW_INFO_KEY) or {}
    if not info or not info.get("features") or "served" not in routed:
        return None  # only images the verifier strategy sent to a human are reviews
    versions = {v.tag: v for v in datastore.versions(image_id)}
    judged = info.get("label_tag")
    final = versions.get("final")
    if final is None or judged not in versions or versions[judged].kind == LabelKind.HUMAN:
        return None
    if routed.get("final_version") == final.version:
        return None  # this final was already counted
    final_array = _read(datastore.get_label_uri(image_id, "final"))
    machine = _read(datastore.get_label_uri(image_id, judged))
    if final_array.shape != machine.shape:
        return None
    structures, dices = [], []
    for name, value in settings.label_map.items():
        if name not in info["features"]:
            continue
        a, b = machine == value, final_array == value
        d = dice(a, b)
        if a.any() or b.any():
            dices.append(d)
        structures.append(
            {
                "structure": name,
                "features": info["features"][name],
                "dice": round(d, 6),
                "was_wrong": bool(d < settings.review_wrong_dice),
            }
        )
    overall = float(np.mean(dices)) if dices else 1.0
    record = {
        "image_id": image_id,
        "time": now_iso(),
        "iteration": info.get("iteration"),
        "judged_tag": judged,
        "image_score": info.get("score"),
        "dice": round(overall, 6),
        "image_wrong": bool(overall < settings.review_wrong_dice),
        "structures": structures,
    }
    atomic_write_json([*files.load_reviews(), record], files.reviews)
    datastore.update_image_info(
        image_id,
        {REVIEW_INFO_KEY: (datastore.get_image_info(image_id).get(REVIEW_INFO_KEY) or {})
         | {"reviewed": record["time"], "was_wrong": record["image_wrong"], "dice": record["dice"],
            "final_version": final.version}},
    )  # fmt: skip
    return record


def _read(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj).astype(np.int64)


def operating_point(records: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """ROC of the verifier's image scores against the review outcomes, and its threshold."""
    pairs = [
        (r["image_score"], r["image_wrong"]) for r in records if r.get("image_score") is not None
    ]
    if not pairs or len({w for _, w in pairs}) < 2:
        return None
    scores, bad = zip(*pairs, strict=True)
    point = choose_threshold(list(scores), list(bad), target_sensitivity=target)
    curve = roc_curve(list(scores), list(bad))
    return {"curve": curve, "point": point}


# ----------------------------------------------------------------------------- trainer
class EMTrainTask(OptionsTrainTask):
    """Trainer ``em``: E-step (verify, correct, route) then M-step (retrain), per iteration.

    Writes happen only after the last M-step succeeded, in one method run
    (:mod:`emlabel.monailabel.runs`): the segmentation model, the corrections as label
    versions, each image's verifier info, the ROC and the EM state become visible together
    when the run commits; a failed or killed run leaves all of them as they were.
    """

    REQUEST_KEYS: tuple[str, ...] = (
        "iterations",
        "epochs",
        "correct_threshold",
        "review_threshold",
        "pseudo_labels",
        "seed",
    )

    OPTION_NAME = "em"

    def __init__(
        self,
        *,
        model_path: str,
        segmentation_model_path: str,
        settings: AppSettings,
        description: str,
    ) -> None:
        super().__init__(model_path=model_path, settings=settings, description=description)
        self.segmentation_model_path = Path(segmentation_model_path)
        self.files = EMFiles(self.model_path.parent)

    def default_options(self, settings: AppSettings) -> Any:
        return EMOptions(epochs=settings.max_epochs, seed=settings.seed)

    def __call__(self, request: dict[str, Any], datastore: VersionedDatastore) -> dict[str, Any]:
        options = self.parse_request(request)
        settings = dataclasses.replace(self._settings, seed=options.seed)
        critic = Critic(settings=settings, files=self.files)
        started = now_iso()
        first = self.files.iteration() + 1
        reviews = self.files.load_reviews()
        roc = operating_point(reviews, settings.target_sensitivity)
        review_threshold = (
            min(float(roc["point"].threshold), options.correct_threshold)
            if roc and math.isfinite(roc["point"].threshold)
            else options.review_threshold
        )
        truth = DemoTruth.find(Path(datastore._datastore_path))
        with (
            tempfile.TemporaryDirectory(prefix="emlabel-em-") as tmp,
            datastore.begin_run("em", stats_path=self.stats_path) as method_run,
        ):
            workdir = Path(tmp)
            overlay: dict[str, str] = {}
            corrections: list[tuple[str, str, Provenance]] = []
            state = self._initial_model(datastore, settings, options, overlay, workdir)
            iterations = []
            run = None
            for n in range(first, first + options.iterations):
                run = critic.run(datastore, state, overlay=overlay)
                decisions = self._e_step(run, options, review_threshold)
                for decision in decisions:
                    if decision.action == "correct":
                        path, provenance = self._correction(
                            run, decision, datastore, workdir, iteration=n, overlay=overlay
                        )
                        overlay[decision.image_id] = path
                        corrections.append((decision.image_id, path, provenance))
                state, m_stats = self._m_step(datastore, settings, options, overlay, state, workdir)
                row = summarize_iteration(n, decisions, run, m_stats, truth, datastore, overlay)
                iterations.append(row)
                logger.info(
                    "em iteration %d: %s",
                    n,
                    {k: row[k] for k in ("accepted", "corrected", "queued", "mean_score")},
                )
                self.write_stats(
                    self._stats("RUNNING", started, options, iterations, review_threshold, roc)
                )
            # ---- commit: model, versions, image info, state, all visible at once
            checksum = method_run.stage_checkpoint(
                self.segmentation_model_path,
                state,
                {
                    "method": "segmentation",
                    "trained_by": "em",
                    "labels": list(settings.labels),
                    "settings": settings_to_dict(settings),
                    "trained_at": now_iso(),
                    "em_iteration": first + options.iterations - 1,
                },
            )
            model = f"{self.segmentation_model_path.name}@sha256:{checksum[:16]}"
            written = {}
            for image_id, path, provenance in corrections:
                version = method_run.add_version(image_id, path, provenance.replace(model=model))
                written[image_id] = version.tag
            last = first + options.iterations - 1
            self._write_verifier_info(method_run, run, decisions, written, last, model)
            if roc is not None:
                save_roc(
                    roc["curve"],
                    roc["point"],
                    method_run.stage_path(self.files.roc_json),
                    method_run.stage_path(self.files.roc_png),
                )
            method_run.stage_json(self.files.state, {"iteration": last, "time": now_iso()})
            done = self.write_stats(
                self._stats(
                    "DONE", started, options, iterations, review_threshold, roc, checksum=checksum
                ),
                run=method_run,
            )
        return done

    # -- steps ------------------------------------------------------------------------
    def _initial_model(
        self, datastore, settings, options, overlay, workdir
    ) -> dict[str, torch.Tensor]:
        if self.segmentation_model_path.exists():
            state, _ = load_checkpoint(self.segmentation_model_path)
            return state
        logger.info("em: no segmentation model yet; an M-step comes first")
        state, _ = self._m_step(datastore, settings, options, overlay, None, workdir)
        return state

    @staticmethod
    def _e_step(run: CriticRun, options: EMOptions, review_threshold: float) -> list[Decision]:
        decisions = []
        for image_id in run.machine_ids:
            verdict = run.verdicts[image_id]
            choice = None
            if verdict.probability_wrong >= options.correct_threshold:
                i = run.data.ids.index(image_id)
                members = run.predictions[image_id]
                model_label = majority(members)
                choice = LabelExpert(verifier=run.verifier, labels=run.label_map).choose(
                    {"current": run.data.labels[i].numpy().astype(np.uint8), "model": model_label},
                    predictions=members,
                    image=run.data.images[i, 0].numpy(),
                    population=run.population,
                    spacing=run.spacing,
                )
            decisions.append(
                decide(
                    verdict,
                    choice,
                    correct_threshold=options.correct_threshold,
                    review_threshold=review_threshold,
                )
            )
        return decisions

    def _correction(self, run, decision, datastore, workdir, *, iteration, overlay):
        i = run.data.ids.index(decision.image_id)
        chosen = majority(run.predictions[decision.image_id])
        array = to_original_grid(
            torch.as_tensor(chosen).long(), run.data.processed[i], run.data.inverter
        )
        image = nib.load(datastore.require_image(decision.image_id))
        path = workdir / f"{decision.image_id}.it{iteration}.nii.gz"
        nib.save(nib.Nifti1Image(array, image.affine), path)
        parent = run.tags[decision.image_id]
        provenance = Provenance(
            kind=LabelKind.CORRECTED,
            source="em",
            version=0,
            parent=parent,
            iteration=iteration,
            scores={"probability_wrong": round(decision.probability_wrong, 4)},
            reason=f"EM E-step: verifier {decision.probability_wrong:.2f} wrong; expert: {decision.reason}",
        )
        return str(path), provenance

    def _m_step(self, datastore, settings, options, overlay, state, workdir):
        """Retrain on the best labels (with pending corrections) + pseudo-labels."""
        items = []
        for image_id in sorted(datastore.list_images()):
            best = datastore.best_label(image_id)
            label = overlay.get(image_id) or (
                datastore.get_label_uri(image_id, best.tag) if best else None
            )
            if label:
                items.append(
                    {"id": image_id, "image": datastore.require_image(image_id), "label": label}
                )
        n_pseudo = 0
        if options.pseudo_labels and state is not None:
            labeled = {item["id"] for item in items}
            unlabeled = [i for i in sorted(datastore.list_images()) if i not in labeled]
            for image_id in unlabeled:
                items.append(self._pseudo_label(datastore, settings, state, image_id, workdir))
                n_pseudo += 1
        train, val = split_items(items, val_fraction=settings.val_fraction, seed=settings.seed)
        result = train_supervised(
            segmentation_unet(settings), train, val, settings=settings, max_epochs=options.epochs
        )
        return result.state_dict, {
            "epochs": options.epochs,
            "best_val_dice": result.best_val_dice,
            "train_images": len(train),
            "pseudo_labels": n_pseudo,
        }

    def _pseudo_label(self, datastore, settings, state, image_id, workdir) -> dict[str, Any]:
        image_path = datastore.require_image(image_id)
        data = load_items(
            [{"id": image_id, "image": image_path}], settings=settings, multiple_of=MULTIPLE_OF_UNET
        )
        net = segmentation_unet(settings)
        net.load_state_dict(state)
        net.eval()
        inferer = SlidingWindowInferer(
            roi_size=settings.roi_size, sw_batch_size=1, overlap=settings.sw_overlap
        )
        with torch.no_grad():
            label = inferer(data.images, net).argmax(dim=1)[0]
        array = to_original_grid(label, data.processed[0], data.inverter)
        path = workdir / f"{image_id}.pseudo.nii.gz"
        nib.save(nib.Nifti1Image(array, nib.load(image_path).affine), path)
        return {"id": image_id, "image": image_path, "label": str(path)}

    def _write_verifier_info(self, writer, run, decisions, written, iteration, model) -> None:
        """Each judged image's verifier info, through ``writer`` (the run: at its commit)."""
        if run is None:
            return
        actions = {d.image_id: d for d in decisions}
        for image_id in run.machine_ids:
            info = verifier_info(
                run, image_id, iteration=iteration, model=model, action=actions[image_id].action
            )
            info["decision_reason"] = actions[image_id].reason
            if image_id in written:
                info["corrected_to"] = written[image_id]
            writer.update_image_info(image_id, {VERIFIER_INFO_KEY: info})

    def _stats(self, state, started, options, iterations, review_threshold, roc, *, checksum=None):
        point = roc["point"] if roc else None
        return {
            "state": state,
            "start_ts": started,
            "iterations": iterations,
            "options": dataclasses.asdict(options),
            "review_threshold": review_threshold,
            "operating_point": None
            if point is None
            else {
                "threshold": point.threshold,
                "sensitivity": point.sensitivity,
                "specificity": point.specificity,
                "review_fraction": point.review_fraction,
                "target_sensitivity": point.target_sensitivity,
                "n_reviews": point.n,
                "auc": roc["curve"].auc,
            },
            "reviews": len(self.files.load_reviews()),
            "model_sha256": checksum,
        }


def majority(members: list[np.ndarray]) -> np.ndarray:
    """Voxel-wise majority vote of label maps (ties: the smaller label value)."""
    stack = np.stack(members).astype(np.int64)
    counts = np.stack([(stack == v).sum(axis=0) for v in range(int(stack.max()) + 1)])
    return counts.argmax(axis=0).astype(np.uint8)


# -------------------------------------------------------------------------- reporting
@dataclasses.dataclass
class DemoTruth:
    """The demo's clean truth (emlabel_demo/manifest.json), to measure label quality."""

    studies: Path
    manifest: dict[str, Any]

    @classmethod
    def find(cls, studies: Path) -> DemoTruth | None:
        path = studies / "emlabel_demo" / "manifest.json"
        if not path.exists():
            return None
        return cls(studies, json.loads(path.read_text()))

    def quality(self, datastore: VersionedDatastore, overlay: dict[str, str]) -> float | None:
        """Mean over labeled images of the mean per-structure Dice of the best label to truth."""
        scores = []
        for image_id, case in self.manifest.get("cases", {}).items():
            best = datastore.best_label(image_id)
            path = overlay.get(image_id) or (
                datastore.get_label_uri(image_id, best.tag) if best else None
            )
            if not path or not case.get("truth"):
                continue
            label, truth = _read(path), _read(str(self.studies / case["truth"]))
            values = [
                v for v in np.unique(np.concatenate([np.unique(label), np.unique(truth)])) if v
            ]
            if values:
                scores.append(float(np.mean([dice(label == v, truth == v) for v in values])))
        return round(float(np.mean(scores)), 6) if scores else None


def summarize_iteration(
    n: int,
    decisions: list[Decision],
    run: CriticRun,
    m_stats: dict[str, Any],
    truth: DemoTruth | None,
    datastore: VersionedDatastore,
    overlay: dict[str, str],
) -> dict[str, Any]:
    """One row of the EM stats: counts per action, mean score, label quality if known."""
    counts = {a: sum(d.action == a for d in decisions) for a in ("accept", "correct", "review")}
    scores = [d.probability_wrong for d in decisions]
    return {
        "iteration": n,
        "verified": len(decisions),
        "accepted": counts["accept"],
        "corrected": counts["correct"],
        "queued": counts["review"],
        "mean_score": round(float(np.mean(scores)), 6) if scores else None,
        "verifier_mode": run.verifier.mode,
        "label_quality_vs_truth": truth.quality(datastore, overlay) if truth else None,
        "m_step": m_stats,
    }


# -------------------------------------------------------------------- scoring/strategy
class VerifierScoring(ScoringMethod):
    """Scoring ``verifier``: each labeled image's probability of a wrong label, with reasons."""

    def __init__(self, *, settings: AppSettings, model_path: str) -> None:
        super().__init__("Label verifier: probability that each image's best label is wrong")
        self.settings = settings
        self.model_path = Path(model_path)
        self.files = EMFiles(self.model_path.parent)

    def __call__(self, request: dict[str, Any], datastore: VersionedDatastore) -> dict[str, Any]:
        if not self.model_path.exists():
            raise InvalidRequestError(
                "verifier needs a trained model; train 'segmentation' or 'em' first"
            )
        state, _ = load_checkpoint(self.model_path)
        run = Critic(settings=self.settings, files=self.files).run(datastore, state)
        iteration = self.files.iteration() + 1  # the reviews it routes feed the next iteration
        model = model_ref(self.model_path)
        for image_id in run.machine_ids:
            datastore.update_image_info(
                image_id,
                {VERIFIER_INFO_KEY: verifier_info(run, image_id, iteration=iteration, model=model)},
            )
        return {i: round(run.verdicts[i].probability_wrong, 6) for i in run.machine_ids}


class VerifierStrategy(Strategy):
    """Strategy ``verifier``: the unreviewed image whose label the system trusts least.

    Hands out at most ``review_budget`` of the labeled images per EM iteration (distinct
    images), most doubtful first, and answers with the score and the top reasons.
    """

    def __init__(self, *, settings: AppSettings, model_dir: str) -> None:
        super().__init__(
            "Verifier disagreement: least trusted label first, within the review budget"
        )
        self.settings = settings
        self.files = EMFiles(Path(model_dir))

    def __call__(
        self, request: dict[str, Any], datastore: VersionedDatastore
    ) -> dict[str, Any] | None:
        iteration = self.files.iteration() + 1
        scores, served, reviewed = {}, set(), set()
        labeled = 0
        for image_id in datastore.list_images():
            info = datastore.get_image_info(image_id)
            if datastore.best_label(image_id) is not None:
                labeled += 1
            verdict = info.get(VERIFIER_INFO_KEY)
            review = info.get(REVIEW_INFO_KEY) or {}
            if review.get("iteration") == iteration:
                served.add(image_id)
            if "final" in datastore.get_labels_by_image_id(image_id):
                reviewed.add(image_id)
            if verdict and verdict.get("score") is not None:
                scores[image_id] = float(verdict["score"])
        chosen = select_for_review(
            scores,
            already_reviewed=served | reviewed,
            budget_fraction=self.settings.review_budget,
            n_labeled=labeled,
            used=len(served),
        )
        budget = budget_report(
            len(served) + bool(chosen),
            budget_fraction=self.settings.review_budget,
            n_labeled=labeled,
        )
        if not chosen:
            logger.info(
                "verifier strategy: nothing to offer (budget %s/%s used)",
                budget.used,
                budget.budget,
            )
            return None
        image_id = chosen[0]
        verdict = datastore.get_image_info(image_id)[VERIFIER_INFO_KEY]
        datastore.update_image_info(
            image_id,
            {
                REVIEW_INFO_KEY: {
                    "iteration": iteration,
                    "served": now_iso(),
                    "score": verdict["score"],
                }
            },
        )
        return {
            "id": image_id,
            "score": verdict["score"],
            "reasons": verdict.get("reasons", []),
            "reason": "; ".join(verdict.get("reasons", [])[:1]) or "highest verifier score",
            "budget": {"used": budget.used, "budget": budget.budget, "iteration": iteration},
        }
