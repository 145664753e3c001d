"""Label versions and how their datastore tags are named.

Every stored label is a version under its own MONAI Label tag. Human and imported labels
keep the tag they were saved under (``final``, ``noisy``, ...); when a newer label is saved
under the same tag, the older one is first kept under an archive tag. Machine versions
always get a fresh tag, so nothing is overwritten in place.
"""

from __future__ import annotations

import dataclasses
import re

from emlabel.labels.provenance import LabelKind, Provenance

FINAL_TAG = "final"
ORIGINAL_TAG = "original"

# <name>-v<NNN>: machine versions and archived versions. Clients may not save under it.
_VERSION_TAG = re.compile(r"^(?P<name>[a-z0-9_]+)-v(?P<version>\d{3,})$")
_CLIENT_TAG = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def machine_tag(method: str, version: int) -> str:
    """Tag of a version written by ``method`` (e.g. ``aide-v003``)."""
    return f"{method}-v{version:03d}"


def archive_tag(tag: str, version: int) -> str:
    """Tag under which a replaced label of ``tag`` is kept (e.g. ``final-v002``)."""
    return f"{tag}-v{version:03d}"


def is_version_tag(tag: str) -> bool:
    """True for tags EMLabel reserves for machine and archived versions."""
    return bool(_VERSION_TAG.match(tag))


def is_valid_client_tag(tag: str) -> bool:
    """Tags a client may save under: letters, digits and ``_``, not a reserved version tag."""
    return bool(_CLIENT_TAG.match(tag)) and not is_version_tag(tag)


def default_kind(tag: str) -> LabelKind:
    """Kind of a label found without provenance (e.g. copied into the studies folder)."""
    if tag == FINAL_TAG:
        return LabelKind.HUMAN
    if tag == ORIGINAL_TAG:
        return LabelKind.PSEUDO
    return LabelKind.IMPORTED


@dataclasses.dataclass(frozen=True)
class LabelVersion:
    """One stored label of one image."""

    image_id: str
    tag: str
    provenance: Provenance

    @property
    def kind(self) -> LabelKind:
        return self.provenance.kind

    @property
    def version(self) -> int:
        return self.provenance.version
