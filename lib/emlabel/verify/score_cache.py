"""Which labels the verifier must judge again: each score is kept with the key of its inputs.

MONAI Label re-runs every scoring method over every image after each training, after each
"Next Sample" and at start (``MONAI_LABEL_AUTO_UPDATE_SCORING``, on by default); for the
verifier that is a flip-ensemble pass per labeled image. A verifier score depends on

    key = SHA-256(label version, annotators' versions, segmentation model checksum,
                  learned verifier checksum, review records, EM iteration)

so an image is judged again only when the key of its inputs differs from the one stored
with its score, or it has none. Left out of the key on purpose: the shape reference (the
human labels of the other images). A new final moves every other score a little; judging
the whole set again after each saved final is the cost this avoids, and the next training
(a new model checksum) judges everything anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from emlabel.errors import InvalidRequestError
from emlabel.labels import LabelKind, LabelVersion
from emlabel.labels.resolver import annotator_versions, best_version

KEY_FIELD = "scoring_key"
"""Where a stored verifier info keeps the key of what it judged."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoringContext:
    """What every score of one scoring pass depends on besides the image's own labels."""

    model: str | None
    """The segmentation model's reference (file name and checksum); None: not trained."""
    learned: str | None
    """The learned verifier's reference; None: not trained."""
    reviews: str
    """Digest of the review records (they calibrate the verifier)."""
    iteration: int
    """The EM iteration the scores' reviews will feed."""

    @property
    def ready(self) -> bool:
        """A verifier needs a model: the segmentation model's ensemble or the learned one."""
        return self.model is not None or self.learned is not None


def records_digest(records: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 of the review records, in order."""
    text = json.dumps(list(records), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def version_id(version: LabelVersion) -> str:
    """One stored version: tag, number and creation time (a tag can hold later versions)."""
    return f"{version.tag}#{version.version}@{version.provenance.time}"


def score_key(
    label: LabelVersion, annotators: Iterable[LabelVersion], context: ScoringContext
) -> str:
    """The key of one image's verifier score (module docstring)."""
    parts = {
        "label": version_id(label),
        "annotators": sorted(version_id(v) for v in annotators),
        **dataclasses.asdict(context),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def current_keys(
    states: Mapping[str, tuple[Mapping[str, Any], Sequence[LabelVersion]]],
    context: ScoringContext,
) -> dict[str, str]:
    """Image id -> the key its score should have now, for every image the verifier judges
    (its best label, pseudo-labels included, is not a human one)."""
    keys = {}
    for image_id, (_, versions) in states.items():
        best = best_version(versions, include_pseudo=True)
        if best is None or best.kind == LabelKind.HUMAN:
            continue
        keys[image_id] = score_key(best, annotator_versions(versions).values(), context)
    return keys


def stale_images(
    states: Mapping[str, tuple[Mapping[str, Any], Sequence[LabelVersion]]],
    context: ScoringContext,
    *,
    info_key: str,
    force: bool = False,
) -> dict[str, str]:
    """Image id -> new key, for the images whose stored score (image info ``info_key``) was
    made from other inputs or is missing; every judged image when ``force``."""
    out = {}
    for image_id, key in current_keys(states, context).items():
        stored = states[image_id][0].get(info_key)
        if force or not isinstance(stored, Mapping) or stored.get(KEY_FIELD) != key:
            out[image_id] = key
    return out


def force_option(request: Mapping[str, Any]) -> bool:
    """A scoring request's option ``force``: judge every label again, current scores or not."""
    force = request.get("force", False)
    if not isinstance(force, bool):
        raise InvalidRequestError(f"scoring option 'force' must be true or false, got {force!r}")
    return force
