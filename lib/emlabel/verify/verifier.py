"""Label Verifier: the probability that a structure's current label is wrong, with reasons.

The verifier turns a :class:`~emlabel.verify.features.StructureFeatures` record (and, when
available, the :class:`~emlabel.verify.population.ShapePopulation` of accepted labels) into
ten non-negative *signals*, each 0 when nothing is suspicious:

====================== ==================================================================
signal                 definition
====================== ==================================================================
dice_deficit           ``max(0, typical Dice - Dice to the ensemble)``
distance_excess        ``log(1 + max(0, ASSD - typical ASSD))`` (ASSD in mm)
ensemble_disagreement  ``max(0, disagreement - typical disagreement)`` (among the members)
volume_outlier         ``min(10, max(0, |z| - 2))``, z = robust z-score of the log-volume
unexpectedly_empty     share of accepted labels holding the structure, if this label is
                       empty and that share is >= 0.5, else 0
component_count        ``min(5, |components - usual count|)`` (non-empty labels)
fragmentation          ``max(0, typical largest-component share - largest-component share)``
outside_parent         ``1 - contained_in`` (share of the shell that is not the parent)
intensity_outlier      ``min(10, max(0, |z| - 2))``, z of the mean intensity inside the label
annotator_disagreement ``max(0, typical agreement - agreement)``, agreement = mean Dice of
                       the label to the other annotators' labels (two or more users)
====================== ==================================================================

"Typical" is the accepted labels' median for the structure when the population knows it,
else :data:`DEFAULT_TYPICAL` (Dice 0.9, ASSD 1 mm, disagreement 0.1, one component, largest
share 1.0; annotator agreement always 0.9, the population does not keep it); signals whose
inputs are missing (no ensemble, no image, no population, fewer than two annotators) are 0.

**Prior mode** (no reviews yet): ``P(wrong) = sigmoid(b + sum_i w_i * s_i)`` with the hand-set
:data:`PRIOR_INTERCEPT` and :data:`PRIOR_WEIGHTS`, chosen as follows (logit units):

- intercept -3.0: with no signal P = 0.047, i.e. prior odds of about 1:20 that a label is wrong
  (most labels of a curated dataset are right; the same order as the 5% review budget).
- dice_deficit 10: the strongest evidence; a Dice 0.3 below what accepted labels reach with the
  same ensemble brings P to 0.5 on its own, 0.6 below to 0.95.
- distance_excess 1.0: catches boundary errors and far-away pieces to which Dice is blind on
  large organs: +1 for ASSD 1.7 mm above typical, +2 for 6.4 mm, +6.2 when nothing overlaps.
- ensemble_disagreement 2.0: a hard case, but says nothing about this label by itself.
- volume_outlier 1.0: +3 (P = 0.5) for a log-volume 5 robust SDs off the median.
- unexpectedly_empty 3.0: a structure every accepted label has is missing: P = 0.5 alone.
- component_count 0.75 per component off the usual count: one stray blob is weak evidence
  (could be a real accessory spleen), four are strong.
- fragmentation 4.0: +1 when a quarter of the volume lies outside the main component.
- outside_parent 6.0: anatomically impossible; half outside -> P = 0.5, wholly outside -> 0.95.
- intensity_outlier 0.5: weak, intensities overlap between tissues and contrast phases.
- annotator_disagreement 12.0: the label disagrees with what other people (or tools) drew on
  the same image, evidence that needs no model and holds where the model is no better than
  the labels (BU-BIL's experts: ``bench/verifier.py``). Stronger per unit than dice_deficit:
  people are usually better judges of a label than a model trained on few of them. Dice 0.65
  to the others brings P to 0.5 on its own, 0.4 to 0.95.

**Fitted mode**: :meth:`LabelVerifier.fit` takes human reviews ``(features, was_wrong)`` and
fits a scikit-learn ``LogisticRegression`` (``class_weight="balanced"``) on the standardised
signals. It needs at least ``min_reviews_per_class`` (default 3) wrong and right labels, else
the verifier keeps its current mode and :attr:`LabelVerifier.fit_message` says why. Reviews
are a biased sample (the verifier chose them), so the fit is adopted only when its
cross-validated AUROC on the reviews is not below the prior weights' AUROC there by more than
:data:`FIT_AUC_MARGIN` (CV on a few reviews is noisy); otherwise
the prior stays, its intercept recalibrated. Balanced
class weights fit the model as if both classes were equally frequent; adding
``log(n_wrong / n_right)`` to the intercept restores the reviewed base rate, so probabilities
stay comparable to the prior mode. The fitted parameters are stored as plain numbers, so
scoring needs no scikit-learn and :meth:`LabelVerifier.to_dict` is plain JSON.

Reasons: every signal's contribution to the logit (prior: ``w_i s_i``; fitted: ``coef_i`` times
the standardised signal) of at least :data:`REASON_MIN_CONTRIBUTION` yields one sentence,
largest contribution first (only signals above 0); a label with no such signal has no reasons.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from emlabel.verify.features import DISTANCE_CAP_MM, StructureFeatures
from emlabel.verify.population import ShapePopulation

logger = logging.getLogger(__name__)

SIGNALS: tuple[str, ...] = (
    "dice_deficit",
    "distance_excess",
    "ensemble_disagreement",
    "volume_outlier",
    "unexpectedly_empty",
    "component_count",
    "fragmentation",
    "outside_parent",
    "intensity_outlier",
    "annotator_disagreement",
)

PRIOR_INTERCEPT = -3.0
PRIOR_WEIGHTS: dict[str, float] = {
    "dice_deficit": 10.0,
    "distance_excess": 1.0,
    "ensemble_disagreement": 2.0,
    "volume_outlier": 1.0,
    "unexpectedly_empty": 3.0,
    "component_count": 0.75,
    "fragmentation": 4.0,
    "outside_parent": 6.0,
    "intensity_outlier": 0.5,
    "annotator_disagreement": 12.0,
}

DEFAULT_TYPICAL: dict[str, float] = {
    "dice_to_ensemble_mean": 0.9,
    "assd_mm": 1.0,
    "ensemble_disagreement": 0.1,
    "n_components": 1.0,
    "largest_component_fraction": 1.0,
    "annotator_agreement": 0.9,
}
"""What a correct label looks like when the population does not know the structure."""

REASON_MIN_CONTRIBUTION = 0.5
"""Smallest logit contribution that earns a signal a sentence in the reasons."""
FIT_AUC_MARGIN = 0.05
"""A fit on reviews replaces the prior unless its cross-validated AUROC is lower by more."""

Z_MARGIN = 2.0  # robust SDs a volume/intensity may deviate before it counts
Z_CAP = 10.0
COMPONENT_CAP = 5.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class StructureVerdict:
    """The verifier's judgement of one structure's label."""

    structure: str
    image_id: str
    probability_wrong: float
    reasons: list[str]
    """Human-readable, most important first; empty when no signal stands out."""
    reason_signals: list[str]
    """The signal behind each reason, in the same order."""
    signals: dict[str, float]
    """The signal values (see the module docstring)."""
    contributions: dict[str, float]
    """Each signal's contribution to the logit."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageVerdict:
    """The verifier's judgement of a whole image's label map."""

    image_id: str
    probability_wrong: float
    """The largest structure probability: the image's label is as doubtful as its worst part."""
    probability_any_wrong: float
    """``1 - prod(1 - p)`` over structures (assumes independent errors)."""
    worst_structure: str | None
    reasons: list[str]
    """Top reasons over all structures, prefixed with the structure, most important first."""
    structures: dict[str, StructureVerdict]

    @classmethod
    def from_structures(
        cls, verdicts: Iterable[StructureVerdict], *, image_id: str = "", top: int = 5
    ) -> ImageVerdict:
        """Aggregate structure verdicts: max probability, noisy-OR, top ``top`` reasons."""
        by_name = {v.structure: v for v in verdicts}
        if not by_name:
            return cls(
                image_id=image_id,
                probability_wrong=0.0,
                probability_any_wrong=0.0,
                worst_structure=None,
                reasons=[],
                structures={},
            )
        worst = max(by_name.values(), key=lambda v: v.probability_wrong)
        any_wrong = 1.0 - float(np.prod([1.0 - v.probability_wrong for v in by_name.values()]))
        ranked: list[tuple[float, float, str]] = []
        for v in by_name.values():
            for signal, reason in zip(v.reason_signals, v.reasons, strict=True):
                text = reason if reason.startswith(v.structure) else f"{v.structure}: {reason}"
                ranked.append((v.probability_wrong, v.contributions[signal], text))
        ranked.sort(key=lambda t: (t[0], t[1]), reverse=True)
        return cls(
            image_id=image_id or worst.image_id,
            probability_wrong=worst.probability_wrong,
            probability_any_wrong=any_wrong,
            worst_structure=worst.structure,
            reasons=[t[2] for t in ranked[:top]],
            structures=by_name,
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["structures"] = {k: v.to_dict() for k, v in self.structures.items()}
        return data


@dataclasses.dataclass(frozen=True, kw_only=True)
class Review:
    """A human's judgement of one structure's label: ground truth for fitting the verifier."""

    features: StructureFeatures
    was_wrong: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class FittedModel:
    """A logistic regression on standardised signals, as plain numbers."""

    signals: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    n_reviews: int
    n_wrong: int

    def contributions(self, values: Mapping[str, float]) -> tuple[float, dict[str, float]]:
        terms = {
            name: c * (values[name] - m) / s
            for name, m, s, c in zip(self.signals, self.mean, self.scale, self.coef, strict=True)
        }
        return self.intercept, terms

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("signals", "mean", "scale", "coef"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FittedModel:
        return cls(
            signals=tuple(data["signals"]),
            mean=tuple(float(x) for x in data["mean"]),
            scale=tuple(float(x) for x in data["scale"]),
            coef=tuple(float(x) for x in data["coef"]),
            intercept=float(data["intercept"]),
            n_reviews=int(data["n_reviews"]),
            n_wrong=int(data["n_wrong"]),
        )

    def on_signals(self, signals: Sequence[str]) -> FittedModel:
        """The same model over ``signals``: a model stored before a signal existed gets it
        with coefficient 0 (mean 0, scale 1), so it scores exactly as it did; ValueError
        when the model uses a signal not in ``signals``."""
        unknown = set(self.signals) - set(signals)
        if unknown:
            raise ValueError(f"fitted model uses unknown signals {sorted(unknown)}")
        old = dict(
            zip(self.signals, zip(self.mean, self.scale, self.coef, strict=True), strict=True)
        )
        rows = [old.get(s, (0.0, 1.0, 0.0)) for s in signals]
        return dataclasses.replace(
            self,
            signals=tuple(signals),
            mean=tuple(r[0] for r in rows),
            scale=tuple(r[1] for r in rows),
            coef=tuple(r[2] for r in rows),
        )


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _typical(population: ShapePopulation | None, structure: str, field: str) -> tuple[float, bool]:
    """(typical value, True if it comes from the population)."""
    if population is not None:
        stat = population.typical(structure, field)
        if stat is not None:
            return stat.median, True
    return DEFAULT_TYPICAL[field], False


def _source(from_population: bool, value: float, fmt: str) -> str:
    if from_population:
        return f"accepted labels: median {value:{fmt}}"
    return f"expected about {value:{fmt}}"


def compute_signals(
    features: StructureFeatures, population: ShapePopulation | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """The signal values and, for each, the sentence that explains it (module docstring)."""
    f = features
    name = f.structure
    values = dict.fromkeys(SIGNALS, 0.0)
    texts = dict.fromkeys(SIGNALS, "")

    if f.dice_to_ensemble_mean is not None:
        typical, known = _typical(population, name, "dice_to_ensemble_mean")
        values["dice_deficit"] = max(0.0, typical - f.dice_to_ensemble_mean)
        present = f.ensemble_present_fraction
        n_found = None if present is None else round(present * f.n_members)
        if f.empty and n_found:
            texts["dice_deficit"] = (
                f"label has no {name} but {n_found}/{f.n_members} models find it "
                f"(mean {f.ensemble_volume_mm3 or 0.0:.0f} mm³)"
            )
        elif not f.empty and n_found == 0:
            texts["dice_deficit"] = (
                f"no model finds {name}, the label has {f.volume_mm3:.0f} mm³ of it"
            )
        else:
            texts["dice_deficit"] = (
                f"Dice to model ensemble {f.dice_to_ensemble_mean:.2f} "
                f"({_source(known, typical, '.2f')})"
            )
    if f.assd_mm is not None:
        typical, known = _typical(population, name, "assd_mm")
        values["distance_excess"] = math.log1p(max(0.0, f.assd_mm - typical))
        if f.assd_mm >= DISTANCE_CAP_MM:
            texts["distance_excess"] = "label and model ensemble do not overlap at all"
        else:
            texts["distance_excess"] = (
                f"surface distance to model ensemble {f.assd_mm:.1f} mm ASSD, "
                f"{f.hd95_mm or 0.0:.1f} mm HD95 ({_source(known, typical, '.1f')} mm ASSD)"
            )
    if f.ensemble_disagreement is not None and f.n_members >= 2:
        typical, known = _typical(population, name, "ensemble_disagreement")
        values["ensemble_disagreement"] = max(0.0, f.ensemble_disagreement - typical)
        texts["ensemble_disagreement"] = (
            f"models disagree among themselves: mean pairwise Dice "
            f"{1.0 - f.ensemble_disagreement:.2f} ({_source(known, 1.0 - typical, '.2f')})"
        )

    if population is not None:
        score = population.volume_score(f)
        if score is not None:
            values["volume_outlier"] = min(Z_CAP, max(0.0, abs(score.z) - Z_MARGIN))
            if score.percentile >= 100.0:
                where = "larger than every accepted label"
            elif score.percentile <= 0.0:
                where = "smaller than every accepted label"
            else:
                where = f"at the {_ordinal(min(99, max(1, round(score.percentile))))} percentile"
            texts["volume_outlier"] = (
                f"volume {f.volume_mm3:.0f} mm³ {where} "
                f"(accepted labels: median {score.median_mm3:.0f} mm³)"
            )
        present = population.present_fraction(name)
        if f.empty and present is not None and present >= 0.5:
            values["unexpectedly_empty"] = present
            texts["unexpectedly_empty"] = (
                f"label has no {name} but {present:.0%} of accepted labels have it"
            )
        if f.intensity_mean is not None:
            stat = population.typical(name, "intensity_mean")
            if stat is not None:
                z = stat.z(f.intensity_mean)
                values["intensity_outlier"] = min(Z_CAP, max(0.0, abs(z) - Z_MARGIN))
                texts["intensity_outlier"] = (
                    f"mean intensity {f.intensity_mean:.1f} inside the label "
                    f"(accepted labels: median {stat.median:.1f})"
                )

    if not f.empty:
        usual = population.typical_components(name) if population is not None else None
        usual = usual if usual is not None else round(DEFAULT_TYPICAL["n_components"])
        values["component_count"] = min(COMPONENT_CAP, float(abs(f.n_components - usual)))
        plural = "s" if f.n_components != 1 else ""
        texts["component_count"] = f"{f.n_components} connected component{plural} (usually {usual})"
        typical, _ = _typical(population, name, "largest_component_fraction")
        values["fragmentation"] = max(0.0, typical - f.largest_component_fraction)
        texts["fragmentation"] = (
            f"largest component holds only {f.largest_component_fraction:.0%} of the label"
        )
    if f.parent is not None and f.contained_in is not None:
        values["outside_parent"] = max(0.0, 1.0 - f.contained_in)
        texts["outside_parent"] = f"{name} {1.0 - f.contained_in:.0%} outside {f.parent}"
    if f.annotator_agreement is not None:
        typical, known = _typical(population, name, "annotator_agreement")
        values["annotator_disagreement"] = max(0.0, typical - f.annotator_agreement)
        texts["annotator_disagreement"] = (
            f"annotators disagree: Dice {f.annotator_agreement:.2f} to the other annotators' "
            f"labels ({f.n_annotators} annotators; {_source(known, typical, '.2f')})"
        )
    return values, texts


class LabelVerifier:
    """Scores labels in prior mode until :meth:`fit` succeeds; see the module docstring."""

    def __init__(
        self,
        *,
        weights: Mapping[str, float] | None = None,
        intercept: float = PRIOR_INTERCEPT,
        min_reviews_per_class: int = 3,
        regularization: float = 1.0,
    ) -> None:
        weights = dict(PRIOR_WEIGHTS if weights is None else weights)
        unknown = set(weights) - set(SIGNALS)
        if unknown:
            raise ValueError(f"unknown signals {sorted(unknown)}; known: {', '.join(SIGNALS)}")
        if min_reviews_per_class < 1:
            raise ValueError("min_reviews_per_class must be >= 1")
        if regularization <= 0:
            raise ValueError("regularization (scikit-learn's C) must be positive")
        self.weights = {s: float(weights.get(s, 0.0)) for s in SIGNALS}
        self.intercept = float(intercept)
        self.prior_intercept = float(intercept)
        self.min_reviews_per_class = min_reviews_per_class
        self.regularization = float(regularization)
        self.fitted: FittedModel | None = None
        self.fit_message = "prior mode: no reviews fitted yet"

    @property
    def mode(self) -> str:
        """``"prior"`` or ``"fitted on N reviews"``."""
        return "prior" if self.fitted is None else f"fitted on {self.fitted.n_reviews} reviews"

    def score(
        self, features: StructureFeatures, population: ShapePopulation | None = None
    ) -> StructureVerdict:
        """Probability that this structure's label is wrong, with reasons and signals."""
        values, texts = compute_signals(features, population)
        if self.fitted is None:
            bias = self.intercept
            terms = {s: self.weights[s] * values[s] for s in SIGNALS}
        else:
            bias, terms = self.fitted.contributions(values)
        probability = _sigmoid(bias + sum(terms.values()))
        ranked = sorted(
            (s for s in SIGNALS if terms[s] >= REASON_MIN_CONTRIBUTION and values[s] > 0),
            key=lambda s: terms[s],
            reverse=True,
        )
        return StructureVerdict(
            structure=features.structure,
            image_id=features.image_id,
            probability_wrong=probability,
            reasons=[texts[s] for s in ranked],
            reason_signals=ranked,
            signals=values,
            contributions=terms,
        )

    def score_image(
        self,
        features: Mapping[str, StructureFeatures] | Sequence[StructureFeatures],
        population: ShapePopulation | None = None,
        *,
        image_id: str = "",
        top: int = 5,
    ) -> ImageVerdict:
        """Score every structure of one image and aggregate (:meth:`ImageVerdict.from_structures`)."""
        records = features.values() if isinstance(features, Mapping) else features
        verdicts = [self.score(f, population) for f in records]
        return ImageVerdict.from_structures(verdicts, image_id=image_id, top=top)

    def fit(
        self,
        reviews: Iterable[Review | tuple[StructureFeatures, bool]],
        population: ShapePopulation | None = None,
    ) -> bool:
        """Fit on human reviews; False (mode unchanged, :attr:`fit_message` says why) if too few.

        The same ``population`` should later be passed to :meth:`score`: the signals are
        measured against it.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        pairs = [
            (r.features, bool(r.was_wrong)) if isinstance(r, Review) else (r[0], bool(r[1]))
            for r in reviews
        ]
        n_wrong = sum(w for _, w in pairs)
        n_right = len(pairs) - n_wrong
        need = self.min_reviews_per_class
        if n_wrong < need or n_right < need:
            if self.fitted is None and pairs:
                self._recalibrate_prior(pairs, population)
            self.fit_message = (
                f"not fitted: {n_wrong} wrong and {n_right} right reviews, need at least {need} "
                f"of each; mode '{self.mode}'"
                + (f", intercept recalibrated on {len(pairs)} reviews" if pairs else "")
            )
            logger.info(self.fit_message)
            return False
        x = np.asarray([[compute_signals(f, population)[0][s] for s in SIGNALS] for f, _ in pairs])
        y = np.asarray([w for _, w in pairs], dtype=int)
        fit_auc, prior_auc = self._cross_validated_auc(x, y)
        if fit_auc < prior_auc - FIT_AUC_MARGIN:
            self.fitted = None
            self._recalibrate_prior(pairs, population)
            self.fit_message = (
                f"kept the prior weights: a fit on {len(pairs)} reviews ({n_wrong} wrong) ranks "
                f"them worse in cross-validation (AUROC {fit_auc:.3f} < prior's "
                f"{prior_auc:.3f}); intercept recalibrated"
            )
            logger.info(self.fit_message)
            return False
        scaler = StandardScaler().fit(x)
        model = LogisticRegression(C=self.regularization, class_weight="balanced", max_iter=1000)
        model.fit(scaler.transform(x), y)
        self.fitted = FittedModel(
            signals=SIGNALS,
            mean=tuple(float(v) for v in scaler.mean_),
            scale=tuple(float(v) for v in scaler.scale_),
            coef=tuple(float(v) for v in model.coef_[0]),
            intercept=float(model.intercept_[0]) + math.log(n_wrong / n_right),
            n_reviews=len(pairs),
            n_wrong=n_wrong,
        )
        self.fit_message = f"fitted on {len(pairs)} reviews ({n_wrong} wrong, {n_right} right)"
        logger.info(self.fit_message)
        return True

    def _cross_validated_auc(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """AUROC on the reviews of a cross-validated fit and of the prior weights.

        Reviews are chosen by the verifier itself (the least trusted labels first), a biased
        sample on which a fit can rank worse than the priors (``bench/em_loop.py`` measured
        it); the fit is adopted unless it is worse here by more than FIT_AUC_MARGIN.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        folds = int(min(5, y.sum(), len(y) - y.sum()))
        model = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=self.regularization, class_weight="balanced", max_iter=1000),
        )
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
        fitted = cross_val_predict(model, x, y, cv=cv, method="decision_function")
        prior = x @ np.asarray([self.weights[s] for s in SIGNALS])
        return float(roc_auc_score(y, fitted)), float(roc_auc_score(y, prior))

    def _recalibrate_prior(
        self, pairs: list[tuple[StructureFeatures, bool]], population: ShapePopulation | None
    ) -> None:
        """Too few reviews to fit: move the prior's intercept toward the reviewed error rate.

        shift = (logit(observed) - logit(mean predicted)) * n / (n + 5), with the observed
        rate smoothed as (wrong + 0.5) / (n + 1); the shrinkage keeps one review from
        overturning the prior, and the shift is always taken from the prior intercept.
        """
        self.intercept = self.prior_intercept
        predicted = float(np.mean([self.score(f, population).probability_wrong for f, _ in pairs]))
        n, n_wrong = len(pairs), sum(w for _, w in pairs)
        observed = (n_wrong + 0.5) / (n + 1)
        predicted = min(max(predicted, 1e-4), 1 - 1e-4)
        shift = (_logit(observed) - _logit(predicted)) * n / (n + 5)
        self.intercept = self.prior_intercept + shift

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (prior weights and, if fitted, the model) for :meth:`from_dict`."""
        return {
            "mode": self.mode,
            "intercept": self.intercept,
            "weights": dict(self.weights),
            "min_reviews_per_class": self.min_reviews_per_class,
            "regularization": self.regularization,
            "fitted": None if self.fitted is None else self.fitted.to_dict(),
            "fit_message": self.fit_message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelVerifier:
        """Inverse of :meth:`to_dict`. State stored before a signal existed reads back with
        that signal at its prior weight and, in a fitted model, coefficient 0
        (:meth:`FittedModel.on_signals`): it scores as it did when stored."""
        weights = data.get("weights")
        verifier = cls(
            weights=None if weights is None else PRIOR_WEIGHTS | dict(weights),
            intercept=float(data.get("intercept", PRIOR_INTERCEPT)),
            min_reviews_per_class=int(data.get("min_reviews_per_class", 3)),
            regularization=float(data.get("regularization", 1.0)),
        )
        fitted = data.get("fitted")
        if fitted is not None:
            verifier.fitted = FittedModel.from_dict(fitted).on_signals(SIGNALS)
        verifier.fit_message = str(data.get("fit_message", verifier.fit_message))
        return verifier


def _logit(p: float) -> float:
    return math.log(p / (1 - p))
