"""Label versions, their provenance, and the resolver that picks the best one."""

from emlabel.labels.provenance import LabelKind, Provenance
from emlabel.labels.resolver import annotator_versions, best_version, rank
from emlabel.labels.versions import LabelVersion, archive_tag, machine_tag

__all__ = [
    "LabelKind",
    "LabelVersion",
    "Provenance",
    "annotator_versions",
    "archive_tag",
    "best_version",
    "machine_tag",
    "rank",
]
