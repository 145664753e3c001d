"""Data-derived planning (like nnU-Net's fingerprint -> plan): read a studies folder, then
derive spacing, normalisation, patch size, network depth and label map from it."""

from emlabel.planning.fingerprint import Fingerprint, ImageRecord, fingerprint_studies
from emlabel.planning.plan import (
    PLAN_FILE,
    Plan,
    format_plan,
    make_plan,
    plan_studies,
    read_plan,
    write_plan,
)

__all__ = [
    "PLAN_FILE",
    "Fingerprint",
    "ImageRecord",
    "Plan",
    "fingerprint_studies",
    "format_plan",
    "make_plan",
    "plan_studies",
    "read_plan",
    "write_plan",
]
