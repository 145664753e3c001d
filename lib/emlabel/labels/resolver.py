"""The resolver: the single place that decides which label a trainer learns from.

Order: human final > verified machine label > corrected machine label > label learned from
statistics and clicks (weak) > imported label.
Pseudo-labels are only used when asked for. Within a kind the newest version wins.
Archived versions (replaced under their tag) are history, never candidates.

Annotators (:func:`annotator_versions`): the latest human or imported label of each user,
the inputs of a consensus and of inter-annotator agreement.
"""

from __future__ import annotations

from collections.abc import Iterable

from emlabel.labels.provenance import LabelKind
from emlabel.labels.versions import LabelVersion

KIND_RANK: dict[LabelKind, int] = {
    LabelKind.HUMAN: 5,
    LabelKind.VERIFIED: 4,
    LabelKind.CORRECTED: 3,
    LabelKind.WEAK: 2,
    LabelKind.IMPORTED: 1,
    LabelKind.PSEUDO: 0,
}


def rank(version: LabelVersion) -> tuple[int, int]:
    """Sort key: kind first, then version number."""
    return KIND_RANK[version.kind], version.version


def best_version(
    versions: Iterable[LabelVersion], *, include_pseudo: bool = False
) -> LabelVersion | None:
    """The best available label among ``versions`` (one image), or None."""
    candidates = [
        v
        for v in versions
        if not v.provenance.archived
        and not v.provenance.deleted
        and (include_pseudo or v.kind != LabelKind.PSEUDO)
    ]
    return max(candidates, key=rank, default=None)


ANNOTATOR_KINDS: frozenset[LabelKind] = frozenset({LabelKind.HUMAN, LabelKind.IMPORTED})
"""Kinds of label a person or an outside tool made: the annotators' labels."""


def annotator_versions(versions: Iterable[LabelVersion]) -> dict[str, LabelVersion]:
    """User -> that user's latest human or imported label of one image, sorted by user.

    Archived versions count (a label replaced under its tag by another user's is still its
    user's latest); a user whose latest label was deleted has none; versions without a user
    cannot be told apart and are left out.
    """
    latest: dict[str, LabelVersion] = {}
    for v in versions:
        user = v.provenance.user
        if not user or v.kind not in ANNOTATOR_KINDS or v.provenance.pending:
            continue
        if user not in latest or v.version > latest[user].version:
            latest[user] = v
    return {u: latest[u] for u in sorted(latest) if not latest[u].provenance.deleted}
