"""Options of the EM loop (our design; the ScaleMAI abstract gives no numbers)."""

from __future__ import annotations

import dataclasses

from emlabel.errors import SettingsError

LEARNER_NAMES = ("segmentation", "aide", "cgs")
"""Learners the loop can drive (the registry in :mod:`emlabel.learners` has exactly these)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EMOptions:
    """One ``em`` training run: ``iterations`` x (E-step, M-step)."""

    iterations: int = 1
    """EM iterations in this run."""
    epochs: int = 20
    """Training epochs of each M-step."""
    correct_threshold: float = 0.8
    """Verifier probability above which the label is taken as wrong and the expert may fix it."""
    review_threshold: float = 0.5
    """Probability above which a label is doubtful (routed to review) until ROC replaces it."""
    pseudo_labels: bool = True
    """M-step also trains on the model's pseudo-labels of unlabeled images."""
    doubtful_pseudo_labels: bool = False
    """M-step trains on the pseudo-labels the E-step sent to review too. False (the default,
    from ``bench/campaign.py``): only on the accepted and corrected ones; a doubtful guess is
    left out until it is reviewed."""
    seed: int = 0
    """Seed of the M-step training."""
    learner: str = "segmentation"
    """The method each M-step trains and whose ensemble the critic reads (:mod:`emlabel.learners`)."""

    def validate(self) -> None:
        """Check value ranges (``iterations`` is capped here too); the error names the field.

        A train request's other upper bounds are in ``emlabel.bounds.REQUEST_MAXIMA``.
        """
        checks = {
            "iterations": 1 <= self.iterations <= 20,
            "epochs": self.epochs >= 1,
            "correct_threshold": 0 < self.correct_threshold <= 1,
            "review_threshold": 0 < self.review_threshold <= self.correct_threshold,
            "seed": self.seed >= 0,
            "learner": self.learner in LEARNER_NAMES,
        }
        for key, ok in checks.items():
            if not ok:
                valid = f"; valid: {', '.join(LEARNER_NAMES)}" if key == "learner" else ""
                raise SettingsError(
                    f"em option '{key}' has an invalid value: {getattr(self, key)!r}{valid}"
                )
