"""Provenance of a label version: who or what made it, from what, and why.

Stored in the label's info (MONAI Label's datastore JSON) under the key ``emlabel``, so
stock viewers and endpoints keep working and ignore it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from enum import StrEnum
from typing import Any

INFO_KEY = "emlabel"


class LabelKind(StrEnum):
    """How much a label version is trusted; the resolver prefers higher kinds."""

    HUMAN = "human"
    """Saved by an annotator as the final label."""
    VERIFIED = "verified"
    """A machine label that a verifier or a human review accepted."""
    CORRECTED = "corrected"
    """A machine correction of an earlier label (e.g. AIDE, EM)."""
    WEAK = "weak"
    """Predicted by a model trained from weak supervision (statistics + clicks)."""
    IMPORTED = "imported"
    """Brought in from outside (crowd, old model, hurried annotator)."""
    PSEUDO = "pseudo"
    """A model prediction for an image without any label."""


def now_iso() -> str:
    """The current UTC time in ISO 8601, to the second."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Provenance:
    """Where a label version came from."""

    kind: LabelKind
    """Trust class used by the resolver."""
    source: str
    """``human``, ``import`` or the method that wrote it (``aide``, ``em``, ...)."""
    version: int
    """Per-image version number, increasing with every stored label."""
    parent: str | None = None
    """Tag of the version this one was derived from, if any."""
    iteration: int | None = None
    """Training epoch or EM iteration that produced it."""
    model: str | None = None
    """Model name and checksum (``name@sha256:...``) that produced it."""
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    """Scores attached by the writer (e.g. Dice to the parent)."""
    reason: str = ""
    """Why the version exists, in words."""
    user: str | None = None
    """Who saved it (for human and imported labels)."""
    time: str = dataclasses.field(default_factory=now_iso)
    """When it was stored (UTC)."""
    archived: bool = False
    """True when a newer label replaced it under its original tag; kept for history."""
    run: str | None = None
    """Id of the method run that wrote it (``<studies>/.emlabel-runs/<run>.json``), if any."""
    pending: bool = False
    """True until its run committed; pending versions are stored but never used or shown."""
    deleted: bool = False
    """True when a client deleted it: kept (nothing is lost), never used for training."""
    deleted_by: str | None = None
    """Who deleted it (the authenticated user, when auth is on)."""
    deleted_at: str | None = None
    """When it was deleted (UTC)."""

    def to_info(self) -> dict[str, Any]:
        """The JSON-able dict stored under ``INFO_KEY`` in the label info."""
        data = dataclasses.asdict(self)
        data["kind"] = str(self.kind)
        return data

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> Provenance | None:
        """Read provenance from a label info dict; None if the label has none."""
        data = info.get(INFO_KEY)
        if not isinstance(data, dict):
            return None
        fields = {f.name for f in dataclasses.fields(cls)}
        clean = {k: v for k, v in data.items() if k in fields}
        try:
            clean["kind"] = LabelKind(clean["kind"])
            return cls(**clean)
        except (KeyError, ValueError, TypeError):
            return None

    def replace(self, **changes: Any) -> Provenance:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
