"""Which verifier the app uses: the hand-built one or the learned one, and why.

The rule:

1. **Reviews.** Once the human reviews hold at least ``min_per_class`` wrong and right
   structure labels that both verifiers had scored (each review keeps the two probabilities
   recorded when the label was judged), the one with the higher AUROC on them is used.
2. **Otherwise the hand-built one**, whose every number can be explained. The learned
   verifier's own validation (corruptions of held-out finals,
   :func:`emlabel.verify.learned.model.train_learned_verifier`, scored by both verifiers) is
   reported in the reason but does not choose: those errors are synthetic, of the kind the
   learned verifier trained on, and ``bench/verifier.py`` found real label errors (experts'
   masks, pseudo-labels) ranked far worse than that validation promised.

Ties go to the hand-built verifier. A learned verdict keeps the hand-built reasons (the
learned network gives none of its own) behind one sentence naming its probability, so
reasons stay readable either way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from emlabel.verify.verifier import StructureVerdict

HAND_BUILT = "hand_built"
LEARNED = "learned"
VERIFIERS = (HAND_BUILT, LEARNED)
MIN_REVIEWS_PER_CLASS = 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerifierChoice:
    """The verifier in use, on what evidence, and each one's AUROC on it."""

    name: str
    basis: str
    """``reviews`` (chosen on them) or ``default`` (the hand-built one, too few reviews)."""
    auroc: dict[str, float]
    reason: str


def _auroc(scores: Sequence[float], wrong: Sequence[bool]) -> float:
    from sklearn.metrics import roc_auc_score

    if not 0 < sum(wrong) < len(wrong):
        return float("nan")
    return float(roc_auc_score(list(wrong), list(scores)))


def choose_verifier(
    *,
    reviews: Sequence[tuple[Mapping[str, float], bool]] = (),
    validation: Mapping[str, Sequence[float]] | None = None,
    validation_wrong: Sequence[bool] = (),
    learned_available: bool,
    min_per_class: int = MIN_REVIEWS_PER_CLASS,
) -> VerifierChoice:
    """Apply the module's rule.

    ``reviews``: per reviewed structure, ``({"hand_built": p, "learned": p}, was_wrong)``;
    ``validation``: each verifier's scores on the learned verifier's validation cases, whose
    truth is ``validation_wrong`` (reported only).
    """
    if not learned_available:
        why = "no learned verifier trained yet (POST /train/verifier)"
        return VerifierChoice(name=HAND_BUILT, basis="default", auroc={}, reason=why)
    both = [(s, w) for s, w in reviews if all(k in s for k in VERIFIERS)]
    n_wrong = sum(w for _, w in both)
    if min(n_wrong, len(both) - n_wrong) >= min_per_class:
        wrong = [w for _, w in both]
        auroc = {k: _auroc([s[k] for s, _ in both], wrong) for k in VERIFIERS}
        return _pick(
            auroc, "reviews", f"on {len(both)} reviewed structure labels ({n_wrong} wrong)"
        )
    why = (
        f"hand-built in use until {min_per_class} wrong and {min_per_class} right reviews "
        f"scored by both verifiers exist ({n_wrong} wrong, {len(both) - n_wrong} right so far)"
    )
    auroc: dict[str, float] = {}
    if validation is not None:
        auroc = {k: _auroc(validation[k], validation_wrong) for k in VERIFIERS}
        why += (
            f"; on {len(validation_wrong)} synthetic errors of its validation finals (not used "
            f"to choose) AUROC learned {auroc[LEARNED]:.3f}, hand-built {auroc[HAND_BUILT]:.3f}"
        )
    return VerifierChoice(name=HAND_BUILT, basis="default", auroc=auroc, reason=why)


def _pick(auroc: Mapping[str, float], basis: str, where: str) -> VerifierChoice:
    learned, hand = auroc[LEARNED], auroc[HAND_BUILT]
    better = math.isfinite(learned) and (not math.isfinite(hand) or learned > hand)
    name = LEARNED if better else HAND_BUILT
    text = f"AUROC learned {learned:.3f} vs hand-built {hand:.3f} {where}: {name} in use"
    return VerifierChoice(name=name, basis=basis, auroc=dict(auroc), reason=text)


def with_learned_probability(verdict: StructureVerdict, probability: float) -> StructureVerdict:
    """The hand-built verdict with the learned probability, its sentence first in the reasons."""
    logit = math.log(max(probability, 1e-6) / max(1 - probability, 1e-6))
    return dataclasses.replace(
        verdict,
        probability_wrong=probability,
        reasons=[f"learned verifier: {probability:.0%} likely wrong", *verdict.reasons],
        reason_signals=["learned", *verdict.reason_signals],
        contributions=verdict.contributions | {"learned": logit},
    )
