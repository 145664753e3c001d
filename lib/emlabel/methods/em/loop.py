"""The EM loop: E-step (critic, expert: accept / correct / route), M-step (retrain), repeated.

Plain library code over :class:`EMItem` files and a :class:`Learner`. Corrections and
pseudo-labels are written as new NIfTI files in a work folder; nothing the items point
at is changed. The caller (the ``em`` trainer) decides what becomes a label version and
when (all at once, after the last M-step succeeded).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emlabel.data.label_files import write_label
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


@dataclasses.dataclass
class EMResult:
    """What a run of the loop produced (nothing of it stored yet)."""

    iterations: list[dict[str, Any]]
    corrections: list[Correction]
    last_run: CriticRun | None
    last_decisions: list[Decision]


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
    learner: Learner, items: Sequence[EMItem], *, settings: AppSettings, workdir: Path
) -> list[EMItem]:
    """Items without a label, each with the learner's prediction as a file in ``workdir``."""
    out = []
    for item in (item for item in items if not item.label):
        # one image at a time: its own padding (as when it is served) and bounded memory
        data = load_items([item.as_dict()], settings=settings, multiple_of=learner.multiple_of)
        (label,) = learner.predict(data)
        path = save_on_image_grid(
            label,
            data,
            0,
            image=item.image,
            path=workdir / f"{item.id}.pseudo.nii.gz",
            settings=settings,
        )
        out.append(item.with_label(path, tag="pseudo-label"))
    return out


def pending_tag(image_id: str, iteration: int) -> str:
    """Stand-in tag of a correction not stored yet (the caller maps it to the stored tag)."""
    return f"pending:{image_id}:{iteration}"


class EMLoop:
    """``options.iterations`` x (critic + E-step, M-step) with one learner."""

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

    def m_step(self, items: Sequence[EMItem]) -> dict[str, Any]:
        """Retrain the learner on the current labels (+ pseudo-labels of unlabeled images)."""
        train = [item for item in items if item.label]
        n_pseudo = 0
        if self.learner.semi_supervised:
            train = list(items)
        elif self.options.pseudo_labels and self.learner.trained:
            pseudo = pseudo_label_files(
                self.learner, items, settings=self.settings, workdir=self.workdir
            )
            train += pseudo
            n_pseudo = len(pseudo)
        stats = self.learner.fit(train, FitSpec(epochs=self.options.epochs, seed=self.options.seed))
        return stats | {"pseudo_labels": n_pseudo}

    def run(self, items: Sequence[EMItem], *, first_iteration: int = 1) -> EMResult:
        """Iterate; ``items`` carry the current best labels (the learner may be untrained)."""
        current = {item.id: item for item in items}
        if not self.learner.trained:
            logger.info("em: no %s model yet; an M-step comes first", self.learner.name)
            self.m_step(list(current.values()))
        rows, corrections = [], []
        run, decisions = None, []
        for n in range(first_iteration, first_iteration + self.options.iterations):
            run = self.critic.run(list(current.values()), self.learner)
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
            for decision in decisions:
                if decision.action != Action.CORRECT:
                    continue
                i = run.data.ids.index(decision.image_id)
                path = save_on_image_grid(
                    result.corrections[decision.image_id],
                    run.data,
                    i,
                    image=current[decision.image_id].image,
                    path=self.workdir / f"{decision.image_id}.it{n}.nii.gz",
                    settings=self.settings,
                )
                parent = run.tags[decision.image_id]
                corrections.append(
                    Correction(
                        image_id=decision.image_id,
                        path=str(path),
                        parent=parent,
                        iteration=n,
                        probability_wrong=decision.probability_wrong,
                        reason=decision.reason,
                    )
                )
                current[decision.image_id] = current[decision.image_id].with_label(
                    str(path), tag=pending_tag(decision.image_id, n)
                )
            m_stats = self.m_step(list(current.values()))
            row = summarize_iteration(n, decisions, run, m_stats)
            rows.append(row)
            logger.info(
                "em iteration %d: %s",
                n,
                {k: row[k] for k in ("accepted", "corrected", "queued", "mean_score")},
            )
            if self.on_iteration is not None:
                self.on_iteration(row)
        return EMResult(
            iterations=rows, corrections=corrections, last_run=run, last_decisions=decisions
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
