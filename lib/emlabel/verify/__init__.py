"""E-step critics: Label Verifier, Label Expert, ROC operating point and review budget.

Plain numpy/scipy/scikit-learn code, no server imports. See each module's docstring:
``features`` (evidence per structure), ``population`` (accepted labels' shape statistics),
``verifier`` (probability a label is wrong, with reasons), ``expert`` (pairwise choice among
candidate labels), ``roc`` (threshold at a target sensitivity), ``budget`` (review routing).
"""

from emlabel.verify.budget import (
    DEFAULT_BUDGET_FRACTION,
    BudgetReport,
    budget_report,
    review_budget,
    select_for_review,
)
from emlabel.verify.expert import Comparison, ExpertChoice, LabelExpert
from emlabel.verify.features import (
    DEFAULT_CONTAINMENT,
    DISTANCE_CAP_MM,
    StructureFeatures,
    structure_features,
)
from emlabel.verify.population import ShapePopulation, VolumeScore
from emlabel.verify.roc import OperatingPoint, RocCurve, choose_threshold, roc_curve, save_roc
from emlabel.verify.verifier import (
    PRIOR_INTERCEPT,
    PRIOR_WEIGHTS,
    SIGNALS,
    ImageVerdict,
    LabelVerifier,
    Review,
    StructureVerdict,
    compute_signals,
)

__all__ = [
    "DEFAULT_BUDGET_FRACTION",
    "DEFAULT_CONTAINMENT",
    "DISTANCE_CAP_MM",
    "PRIOR_INTERCEPT",
    "PRIOR_WEIGHTS",
    "SIGNALS",
    "BudgetReport",
    "Comparison",
    "ExpertChoice",
    "ImageVerdict",
    "LabelExpert",
    "LabelVerifier",
    "OperatingPoint",
    "Review",
    "RocCurve",
    "ShapePopulation",
    "StructureFeatures",
    "StructureVerdict",
    "VolumeScore",
    "budget_report",
    "choose_threshold",
    "compute_signals",
    "review_budget",
    "roc_curve",
    "save_roc",
    "select_for_review",
    "structure_features",
]
