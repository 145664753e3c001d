"""Label Expert: choose the best of several candidate labels by pairwise comparison.

Judging one label alone is unreliable; deciding which of two labels is better is much easier
(the Label Critic lesson in the spec). :meth:`LabelExpert.choose` therefore plays a round
robin: every pair of candidates (current label, each model's prediction, earlier versions) is
compared once, and the candidate with the most wins is chosen.

**One comparison** scores both candidates on the *same evidence*:

- the ensemble members that are neither candidate (a model's own prediction must not vote for
  itself); when every member equals one of the two, no ensemble evidence is left and the two
  are judged on shape alone (said so in the reason);
- the population of accepted labels, the containment rule and the image, as given.

Each candidate's badness is the expected number of wrong structures, ``sum_s P(wrong_s)``, from
the :class:`~emlabel.verify.verifier.LabelVerifier` (prior or fitted) applied to its
:class:`~emlabel.verify.features.StructureFeatures` on that evidence, so agreement with the
ensemble, shape plausibility against the population, containment and component counts all
count. The lower badness wins; the reason names the structure where the two differ most and
what is wrong with the loser there.

**With a pairwise judge** (the learned verifier's pair head, :meth:`emlabel.verify.learned.
LearnedVerifier.prefer`, used when the app chose the learned verifier), a comparison is
decided by the judge instead: ``P(a better than b)`` per structure where the two differ, from
the image, both labels and the evidence members' mean masks; the preference is the mean of
``P - 0.5`` over those structures, and ``|preference| <= tie_margin`` is a tie. The badness
figures are still computed (they rank the candidates' wins and give the reasons).

**Ties** (badness within ``tie_margin``, default 0.05 expected wrong structures) go to the
current label (name ``current``, configurable): with no clear evidence, no change. Between two
other candidates the one listed first in ``candidates`` wins (list them from most to least
trusted). **The best** candidate has the most wins; equal wins go to the lower mean badness
over its comparisons, then to the current label, then to the earlier candidate. When no
candidate carries the current label's name, the first listed one plays its part
(:attr:`ExpertChoice.current`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from emlabel.verify.features import DEFAULT_LABELS, StructureFeatures, structure_features
from emlabel.verify.population import ShapePopulation
from emlabel.verify.verifier import LabelVerifier, StructureVerdict

PairwiseJudge = Callable[
    [np.ndarray, np.ndarray, Mapping[str, np.ndarray] | None], Mapping[str, float]
]
"""``judge(a, b, model_maps) -> {structure: P(a better than b)}`` for one image."""


class Comparison(NamedTuple):
    """One pairwise comparison: the two candidates, the winner, and why."""

    a: str
    b: str
    winner: str
    reason: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExpertChoice:
    """The chosen candidate, every candidate's wins and the comparisons behind them."""

    best: str
    current: str
    wins: dict[str, int]
    badness: dict[str, float]
    """Mean expected number of wrong structures over each candidate's comparisons."""
    comparisons: list[Comparison]

    @property
    def changed(self) -> bool:
        """True when the best candidate is not the current label."""
        return self.best != self.current

    @property
    def reason(self) -> str:
        """One sentence summarising the choice."""
        total = len(self.wins) - 1
        text = f"{self.best} won {self.wins[self.best]} of {total} pairwise comparisons"
        return text if self.changed else f"{text}; kept the current label"

    def to_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "current": self.current,
            "changed": self.changed,
            "reason": self.reason,
            "wins": dict(self.wins),
            "badness": dict(self.badness),
            "comparisons": [c._asdict() for c in self.comparisons],
        }


class LabelExpert:
    """Round-robin pairwise judge of candidate labels; see the module docstring."""

    def __init__(
        self,
        *,
        verifier: LabelVerifier | None = None,
        labels: Mapping[str, int] | None = None,
        containment: Mapping[str | int, str | int] | None = None,
        current: str = "current",
        tie_margin: float = 0.05,
    ) -> None:
        if tie_margin < 0:
            raise ValueError(f"tie_margin must be >= 0, got {tie_margin}")
        self.verifier = verifier if verifier is not None else LabelVerifier()
        self.labels = None if labels is None else dict(labels)
        self.containment = containment
        self.current = current
        self.tie_margin = float(tie_margin)

    def choose(
        self,
        candidates: Mapping[str, np.ndarray],
        *,
        predictions: Sequence[np.ndarray] = (),
        image: np.ndarray | None = None,
        population: ShapePopulation | None = None,
        spacing: Sequence[float],
        structures: Sequence[str] | None = None,
        judge: PairwiseJudge | None = None,
    ) -> ExpertChoice:
        """Compare every pair of ``candidates`` and return the best (see the module docstring).

        ``structures`` limits the judgement to some structures (default: all of ``labels``).
        """
        names = list(candidates)
        if not names:
            raise ValueError("no candidate labels to choose from")
        arrays = {n: np.asarray(candidates[n]) for n in names}
        members = [np.asarray(p) for p in predictions]
        same = {
            n: {i for i, m in enumerate(members) if np.array_equal(arrays[n], m)} for n in names
        }
        cache: dict[tuple[str, tuple[int, ...]], dict[str, StructureVerdict]] = {}

        def verdicts(name: str, evidence: tuple[int, ...]) -> dict[str, StructureVerdict]:
            key = (name, evidence)
            if key not in cache:
                feats = structure_features(
                    arrays[name],
                    [members[i] for i in evidence],
                    spacing=spacing,
                    labels=self.labels,
                    image=image,
                    containment=self.containment,
                )
                cache[key] = self._score(feats, population, structures)
            return cache[key]

        wins = dict.fromkeys(names, 0)
        totals: dict[str, list[float]] = {n: [] for n in names}
        comparisons = []
        for a, b in itertools.combinations(names, 2):
            evidence = tuple(i for i in range(len(members)) if i not in same[a] | same[b])
            va, vb = verdicts(a, evidence), verdicts(b, evidence)
            bad_a = sum(v.probability_wrong for v in va.values())
            bad_b = sum(v.probability_wrong for v in vb.values())
            totals[a].append(bad_a)
            totals[b].append(bad_b)
            comparison = self._compare(a, b, va, vb, bad_a, bad_b, len(evidence), len(members))
            if judge is not None:
                maps = mean_masks([members[i] for i in evidence], self.labels or DEFAULT_LABELS)
                comparison = self._judge(a, b, judge(arrays[a], arrays[b], maps), comparison)
            wins[comparison.winner] += 1
            comparisons.append(comparison)

        mean_bad = {n: float(np.mean(totals[n])) if totals[n] else 0.0 for n in names}
        order = {n: i for i, n in enumerate(names)}
        best = min(names, key=lambda n: (-wins[n], mean_bad[n], n != self.current, order[n]))
        current = self.current if self.current in names else names[0]
        return ExpertChoice(
            best=best, current=current, wins=wins, badness=mean_bad, comparisons=comparisons
        )

    def _score(
        self,
        features: Mapping[str, StructureFeatures],
        population: ShapePopulation | None,
        structures: Sequence[str] | None,
    ) -> dict[str, StructureVerdict]:
        if structures is not None:
            unknown = set(structures) - set(features)
            if unknown:
                raise ValueError(f"unknown structures {sorted(unknown)}")
        keep = features if structures is None else {s: features[s] for s in structures}
        return {s: self.verifier.score(f, population) for s, f in keep.items()}

    def _judge(
        self, a: str, b: str, preference: Mapping[str, float], by_badness: Comparison
    ) -> Comparison:
        """Decide one comparison by the pairwise judge (module docstring)."""
        differing = {s: p for s, p in preference.items() if p != 0.5}
        lean = float(np.mean([p - 0.5 for p in differing.values()])) if differing else 0.0
        if abs(lean) <= self.tie_margin:
            winner = self.current if self.current in (a, b) else a
            return Comparison(
                a, b, winner, f"pairwise judge undecided ({lean + 0.5:.2f}): kept {winner}"
            )
        winner, loser = (a, b) if lean > 0 else (b, a)
        structure = max(differing, key=lambda s: abs(differing[s] - 0.5))
        p_win = differing[structure] if winner == a else 1.0 - differing[structure]
        detail = by_badness.reason if by_badness.winner == winner else "hand-built signals disagree"
        return Comparison(
            a, b, winner,
            f"{structure}: pairwise judge prefers {winner} over {loser} ({p_win:.2f}); {detail}",
        )  # fmt: skip

    def _compare(
        self,
        a: str,
        b: str,
        va: Mapping[str, StructureVerdict],
        vb: Mapping[str, StructureVerdict],
        bad_a: float,
        bad_b: float,
        n_evidence: int,
        n_members: int,
    ) -> Comparison:
        if n_members and not n_evidence:
            basis = "no independent model prediction, judged on shape alone"
        elif n_members:
            basis = f"judged against {n_evidence} of {n_members} model predictions"
        else:
            basis = "no model predictions, judged on shape alone"
        score = f"expected wrong structures {a} {bad_a:.2f}, {b} {bad_b:.2f}; {basis}"

        if abs(bad_a - bad_b) <= self.tie_margin:
            if self.current in (a, b):
                winner, rule = self.current, "kept the current label"
            else:
                winner, rule = a, f"kept {a}, listed first"
            return Comparison(a, b, winner, f"tie within {self.tie_margin:.2f} ({score}): {rule}")

        winner, loser = (a, b) if bad_a < bad_b else (b, a)
        v_win, v_lose = (va, vb) if winner == a else (vb, va)
        structure = max(
            v_lose, key=lambda s: v_lose[s].probability_wrong - v_win[s].probability_wrong
        )
        p_lose = v_lose[structure].probability_wrong
        p_win = v_win[structure].probability_wrong
        problems = v_lose[structure].reasons
        what = problems[0] if problems else "more doubtful overall"
        reason = (
            f"{structure}: {loser} {what} (P wrong {p_lose:.2f} vs {p_win:.2f} for {winner}); "
            f"{score}"
        )
        return Comparison(a, b, winner, reason)


def mean_masks(
    members: Sequence[np.ndarray], labels: Mapping[str, int]
) -> dict[str, np.ndarray] | None:
    """Per structure, the share of ``members`` labelling each voxel with it (None without
    members): the model's probability map the learned verifier reads."""
    if not members:
        return None
    stack = np.stack(members)
    return {name: (stack == v).mean(axis=0).astype(np.float32) for name, v in labels.items()}
