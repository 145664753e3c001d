"""The EM loop: E-step (critic, expert: accept / correct / route), M-step (retrain), repeated.

Plain library code over :class:`EMItem` files and a :class:`Learner`. Each iteration first
gives every image without a label the current model's prediction (a pseudo-label, unless
the learner trains on unlabeled images itself), so the critic judges pseudo-labels like
any machine label and the E-step can correct them or send them to a human; the M-step then
trains on the finals, the other labels and the pseudo-labels as the E-step left them (but
those it sent to review, unless ``doubtful_pseudo_labels``).
Corrections and pseudo-labels are written as new files in a work folder; nothing the items
point at is changed. The caller (the ``em`` trainer) decides what becomes a label version
and when (all at once, after the last M-step succeeded).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from emlabel.data.label_files import write_label
from emlabel.distributed import sharded_map
from emlabel.methods.em.critic import Critic, CriticRun
from emlabel.methods.em.decide import Action, Decision
from emlabel.methods.em.estep import e_step
from emlabel.methods.em.items import EMItem
from emlabel.methods.em.learner import FitSpec, Learner
from emlabel.methods.em.options import EMOptions
from emlabel.settings import AppSettings
from emlabel.training.loading import LoadedSet, load_items, to_original_grid
from emlabel.verify import Review
from emlabel.verify.learned import LearnedVerifier
from emlabel.verify.remaining import estimate_remaining_errors

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Correction:
    """A label the E-step replaced, written to ``path`` (the original image's grid)."""

    image_id: str
    path: str
    parent: str | None
    iteration: int
    probability_wrong: float
    reason: str
    pseudo: bool = False
    """A correction of a pseudo-label: still the model's guess, stored as a pseudo-label."""


@dataclasses.dataclass(frozen=True)
class PseudoLabel:
    """The model's prediction for an image without a label, made at the start of
    ``iteration`` (by the model the previous M-step trained, ``model_sha256`` of its
    weights), in ``path``."""

    image_id: str
    path: str
    iteration: int
    model_sha256: str

    @property
    def tag(self) -> str:
        return pending_tag(self.image_id, self.iteration, kind="pseudo")


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's tensors (names, shapes and values, in order): which
    in-run model made a pseudo-label, for its provenance."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class EMResult:
    """What a run of the loop produced (nothing of it stored yet)."""

    iterations: list[dict[str, Any]]
    corrections: list[Correction]
    last_run: CriticRun | None
    last_decisions: list[Decision]
    pseudo_labels: list[PseudoLabel] = dataclasses.field(default_factory=list)
    """The pseudo-labels to keep: each image's last one and every one a correction replaced
    (in the order made: a correction's parent comes before it)."""


def save_on_image_grid(
    label: torch.Tensor | np.ndarray,
    data: LoadedSet,
    i: int,
    *,
    image: str,
    path: Path,
    settings: AppSettings,
) -> str:
    """Write a label of ``data``'s grid on the voxel grid of image file ``image`` (item
    ``i`` of ``data``), in the image's file type (:func:`emlabel.data.label_files.write_label`)."""
    array = to_original_grid(torch.as_tensor(label).long(), data.processed[i], data.inverter)
    return str(write_label(array, image=image, path=path, settings=settings))


def pseudo_label_files(
    learner: Learner,
    items: Sequence[EMItem],
    *,
    settings: AppSettings,
    workdir: Path,
    iteration: int,
) -> list[PseudoLabel]:
    """The learner's prediction for each of ``items`` as a file in ``workdir``."""
    checksum = state_sha256(learner.state_dict()) if items else ""

    def pseudo_label(item: EMItem) -> PseudoLabel:
        # one image at a time: its own padding (as when it is served) and bounded memory
        data = load_items(
            [{"id": item.id, "image": item.image}], settings=settings,
            multiple_of=learner.multiple_of,
        )  # fmt: skip
        (label,) = learner.predict(data)
        path = save_on_image_grid(
            label,
            data,
            0,
            image=item.image,
            path=workdir / f"{item.id}.pseudo.it{iteration}.nii.gz",
            settings=settings,
        )
        return PseudoLabel(image_id=item.id, path=path, iteration=iteration, model_sha256=checksum)

    # under torchrun each rank predicts its share (``workdir`` is shared by the ranks)
    return sharded_map(pseudo_label, items, progress="pseudo-labels")


_PENDING_PREFIX = {"correction": "pending", "pseudo": "pending-pseudo"}


def pending_tag(
    image_id: str, iteration: int, *, kind: Literal["correction", "pseudo"] = "correction"
) -> str:
    """Stand-in tag of a correction or pseudo-label not stored yet (the caller maps it to the
    stored tag)."""
    return f"{_PENDING_PREFIX[kind]}:{image_id}:{iteration}"


class EMLoop:
    """``options.iterations`` x (pseudo-labels, critic + E-step, M-step) with one learner.

    ``random_reviews`` (score when judged, was wrong) of the reviews drawn at random give
    each iteration's remaining-errors estimate (:mod:`emlabel.verify.remaining`); the scores
    of labels the E-step corrected are those before the correction (until the next
    iteration judges the correction).
    """

    def __init__(
        self,
        *,
        learner: Learner,
        settings: AppSettings,
        options: EMOptions,
        reviews: Sequence[Review],
        review_threshold: float,
        workdir: Path,
        on_iteration: Callable[[dict[str, Any]], None] | None = None,
        learned: LearnedVerifier | None = None,
        review_scores: Sequence[tuple[Mapping[str, float], bool]] = (),
        random_reviews: Sequence[tuple[float, bool]] = (),
    ) -> None:
        self.learner = learner
        self.settings = settings
        self.options = options
        self.critic = Critic(
            settings=settings, reviews=reviews, learned=learned, review_scores=review_scores
        )
        self.review_threshold = review_threshold
        self.workdir = Path(workdir)
        self.on_iteration = on_iteration
        self.random_reviews = list(random_reviews)

    @property
    def makes_pseudo_labels(self) -> bool:
        """Pseudo-labels are made unless switched off or the learner uses unlabeled images."""
        return self.options.pseudo_labels and not self.learner.semi_supervised

    def m_step(self, items: Sequence[EMItem], *, leave_out: Collection[str] = ()) -> dict[str, Any]:
        """Retrain the learner on the current labels (pseudo-labels included) but those of
        ``leave_out``; a semi-supervised learner gets the unlabeled images too."""
        items = [i for i in items if i.id not in leave_out]
        train = list(items) if self.learner.semi_supervised else [i for i in items if i.label]
        n_pseudo = sum(i.pseudo for i in items)
        stats = self.learner.fit(train, FitSpec(epochs=self.options.epochs, seed=self.options.seed))
        return stats | {"pseudo_labels": n_pseudo, "left_out_doubtful": len(leave_out)}

    def refresh_pseudo_labels(
        self, current: dict[str, EMItem], unlabeled: Sequence[str], iteration: int
    ) -> list[PseudoLabel]:
        """Give each image that came without a label the current model's prediction (in
        ``current``; an earlier iteration's pseudo-label or its correction is replaced: the
        model has learned since); the pseudo-labels made."""
        made = pseudo_label_files(
            self.learner, [current[i] for i in unlabeled], settings=self.settings,
            workdir=self.workdir, iteration=iteration,
        )  # fmt: skip
        for pseudo in made:
            current[pseudo.image_id] = current[pseudo.image_id].with_label(
                pseudo.path, tag=pseudo.tag, pseudo=True
            )
        return made

    def write_corrections(
        self,
        corrected: Sequence[Decision],
        labels: Mapping[str, np.ndarray],
        run: CriticRun,
        current: Mapping[str, EMItem],
        iteration: int,
    ) -> list[str]:
        """Each corrected label as a file on its image's grid in the work folder (under
        torchrun each rank writes its share)."""

        def write(decision: Decision) -> str:
            return save_on_image_grid(
                labels[decision.image_id],
                run.data,
                run.data.ids.index(decision.image_id),
                image=current[decision.image_id].image,
                path=self.workdir / f"{decision.image_id}.it{iteration}.nii.gz",
                settings=self.settings,
            )

        return sharded_map(write, corrected)

    def run(self, items: Sequence[EMItem], *, first_iteration: int = 1) -> EMResult:
        """Iterate; ``items`` carry the current best labels (the learner may be untrained)."""
        current = {item.id: item for item in items}
        unlabeled = [item.id for item in items if not item.label]
        if not self.learner.trained:
            logger.info("em: no %s model yet; an M-step comes first", self.learner.name)
            self.m_step(list(current.values()))
        rows, corrections, pseudo_made = [], [], {}
        run, decisions = None, []
        for n in range(first_iteration, first_iteration + self.options.iterations):
            e_start = time.perf_counter()
            if self.makes_pseudo_labels:
                pseudo_made |= {p.tag: p for p in self.refresh_pseudo_labels(current, unlabeled, n)}
            critic_start = time.perf_counter()
            run = self.critic.run(list(current.values()), self.learner)
            expert_start = time.perf_counter()
            result = e_step(
                labels={i: run.label(i) for i in run.machine_ids},
                members=run.members,
                verdicts=run.verdicts,
                verifier=run.verifier,
                population=run.population,
                label_map=self.settings.label_map,
                spacing=self.settings.target_spacing,
                images={i: run.image(i) for i in run.machine_ids},
                annotations=run.annotations,
                judges=run.judges(),
                correct_threshold=self.options.correct_threshold,
                review_threshold=self.review_threshold,
            )
            decisions = result.decisions
            expert_end = time.perf_counter()
            corrected = [d for d in decisions if d.action == Action.CORRECT]
            paths = self.write_corrections(corrected, result.corrections, run, current, n)
            for decision, path in zip(corrected, paths, strict=True):
                parent = run.tags[decision.image_id]
                corrections.append(
                    Correction(
                        image_id=decision.image_id,
                        path=str(path),
                        parent=parent,
                        iteration=n,
                        probability_wrong=decision.probability_wrong,
                        reason=decision.reason,
                        pseudo=current[decision.image_id].pseudo,
                    )
                )
                current[decision.image_id] = current[decision.image_id].with_label(
                    str(path), tag=pending_tag(decision.image_id, n),
                    pseudo=current[decision.image_id].pseudo,  # a corrected guess stays one
                )  # fmt: skip
            doubtful = [] if self.options.doubtful_pseudo_labels else [
                d.image_id for d in decisions
                if d.action == Action.REVIEW and current[d.image_id].pseudo
            ]  # fmt: skip
            m_start = time.perf_counter()
            m_stats = self.m_step(list(current.values()), leave_out=doubtful)
            row = summarize_iteration(n, decisions, run, m_stats) | {
                "e_step_seconds": round(m_start - e_start, 3),
                "m_step_seconds": round(time.perf_counter() - m_start, 3),
                "e_step_parts": {  # wall seconds; *_work: summed over images and ranks
                    "pseudo_labels": round(critic_start - e_start, 3),
                    "critic": round(expert_start - critic_start, 3),
                    "expert": round(expert_end - expert_start, 3),
                    "write_corrections": round(m_start - expert_end, 3),
                    **{f"{k}_work": round(v, 3) for k, v in run.work_seconds.items()},
                },
            }
            row["remaining_errors"] = estimate_remaining_errors(
                [d.probability_wrong for d in decisions],
                self.random_reviews,
                target_sensitivity=self.settings.target_sensitivity,
            ).to_dict()
            rows.append(row)
            logger.info(
                "em iteration %d: %s",
                n,
                {k: row[k] for k in ("accepted", "corrected", "queued", "mean_score")},
            )
            if self.on_iteration is not None:
                self.on_iteration(row)
        keep = {item.tag for item in current.values()} | {c.parent for c in corrections}
        return EMResult(
            iterations=rows,
            corrections=corrections,
            last_run=run,
            last_decisions=decisions,
            pseudo_labels=[p for tag, p in pseudo_made.items() if tag in keep],
        )


def summarize_iteration(
    n: int, decisions: Sequence[Decision], run: CriticRun, m_stats: dict[str, Any]
) -> dict[str, Any]:
    """One row of the EM stats: counts per action, mean verifier score, the M-step."""
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
        "verifier": run.choice.name,
        "verifier_choice": run.choice.reason,
        "m_step": m_stats,
    }
