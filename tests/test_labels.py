"""Provenance round trip, version tags and the resolver's order."""

import pytest

from emlabel.labels import (
    LabelKind,
    LabelVersion,
    Provenance,
    archive_tag,
    best_version,
    machine_tag,
)
from emlabel.labels.versions import default_kind, is_valid_client_tag, is_version_tag


def version(tag: str, kind: LabelKind, n: int, archived: bool = False) -> LabelVersion:
    p = Provenance(kind=kind, source="x", version=n, archived=archived)
    return LabelVersion(image_id="img", tag=tag, provenance=p)


def test_provenance_round_trip():
    p = Provenance(
        kind=LabelKind.CORRECTED,
        source="aide",
        version=4,
        parent="noisy",
        iteration=3,
        model="aide.pt@sha256:abc",
        scores={"dice_to_parent": 0.8},
        reason="low Dice to own prediction",
    )
    assert Provenance.from_info({"emlabel": p.to_info()}) == p
    assert Provenance.from_info({}) is None
    assert Provenance.from_info({"emlabel": {"kind": "nonsense"}}) is None


def test_tags():
    assert machine_tag("aide", 3) == "aide-v003"
    assert archive_tag("final", 12) == "final-v012"
    assert is_version_tag("em-v010") and not is_version_tag("final")
    assert is_valid_client_tag("noisy") and is_valid_client_tag("final")
    for bad in ("aide-v003", "../x", "a/b", "", "x" * 65, "with space"):
        assert not is_valid_client_tag(bad)
    assert default_kind("final") == LabelKind.HUMAN
    assert default_kind("original") == LabelKind.PSEUDO
    assert default_kind("crowd") == LabelKind.IMPORTED


def test_resolver_order_human_verified_corrected_imported():
    imported = version("noisy", LabelKind.IMPORTED, 1)
    corrected = version("aide-v002", LabelKind.CORRECTED, 2)
    verified = version("em-v003", LabelKind.VERIFIED, 3)
    human = version("final", LabelKind.HUMAN, 1)
    assert best_version([imported]) == imported
    assert best_version([imported, corrected]) == corrected
    assert best_version([imported, corrected, verified]) == verified
    assert best_version([verified, human, corrected, imported]) == human


def test_resolver_prefers_newest_within_kind_and_skips_archived_and_pseudo():
    old = version("aide-v002", LabelKind.CORRECTED, 2)
    new = version("em-v005", LabelKind.CORRECTED, 5)
    assert best_version([new, old]) == new
    archived_final = version("final-v001", LabelKind.HUMAN, 1, archived=True)
    assert best_version([archived_final, old]) == old
    pseudo = version("original", LabelKind.PSEUDO, 7)
    assert best_version([pseudo]) is None
    assert best_version([pseudo], include_pseudo=True) == pseudo


@pytest.mark.parametrize("kind", list(LabelKind))
def test_every_kind_has_a_rank(kind):
    assert best_version([version("t", kind, 1)], include_pseudo=True) is not None
