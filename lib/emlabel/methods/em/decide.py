"""The E-step rule: accept, correct (expert has a better candidate) or route to a human."""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from emlabel.verify import ExpertChoice, ImageVerdict


class Action(StrEnum):
    ACCEPT = "accept"
    CORRECT = "correct"
    REVIEW = "review"


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the E-step does with one image's label, and why."""

    image_id: str
    action: Action
    probability_wrong: float
    reason: str
    candidate: str | None = None
    """The expert's choice when ``action`` is ``correct``."""


def decide(
    verdict: ImageVerdict,
    choice: ExpertChoice | None,
    *,
    correct_threshold: float,
    review_threshold: float,
) -> Decision:
    """Confidently wrong + a better candidate -> correct; doubtful -> review; else accept.

    A label the verifier is sure is wrong but for which the expert keeps the current
    candidate goes to a human: neither step can resolve it.
    """
    p = verdict.probability_wrong
    top = "; ".join(verdict.reasons[:3]) or "no warning signal"
    if p >= correct_threshold:
        if choice is not None and choice.changed:
            return Decision(verdict.image_id, Action.CORRECT, p, choice.reason, choice.best)
        return Decision(
            verdict.image_id, Action.REVIEW, p, f"likely wrong, no better candidate: {top}"
        )
    if p >= review_threshold:
        return Decision(verdict.image_id, Action.REVIEW, p, f"doubtful: {top}")
    return Decision(verdict.image_id, Action.ACCEPT, p, f"plausible: {top}")
