"""The annotation campaign (``bench/campaign.py``) through the real server, tiny."""

from __future__ import annotations

import pytest
from monailabel.client import MONAILabelClient

from bench.campaign import Arm, Campaign, Protocol, phantoms
from tests.support.server import TINY_CONF

pytestmark = pytest.mark.server


def tiny_campaign(dataset, work, *, routing: str, review_budget: float) -> Campaign:
    """Two rounds, 2 finals, 1 epoch of a tiny network."""
    campaign = Campaign(
        dataset=dataset,
        arm=Arm(routing=routing, learner="segmentation"),
        protocol=Protocol(rounds=2, epochs=1, n_finals=2, review_budget=review_budget),
        seed=0,
        work=work,
        extra_conf=TINY_CONF | {"max_epochs": "1"},
    )
    campaign.prepare()
    return campaign


def test_two_rounds_record_touches_random_reviews_and_the_estimate(tmp_path):
    dataset = phantoms(tmp_path / "data", n_train=10, n_test=2, seed=0, shape=(32, 32, 24))
    # routing "random": review_random_share 1.0
    campaign = tiny_campaign(dataset, tmp_path / "run", routing="random", review_budget=0.5)
    with campaign.server() as server:
        client = MONAILabelClient(server_url=server.url, tmpdir=str(tmp_path))
        before = client.info()["emlabel_review"]["remaining_errors"]
        assert before["meaningful"] is False and "random review" in before["reason"]
        campaign.start_labels(client)
        campaign.run_rounds(client)
        status = client.info()["emlabel_review"]

    first, second = campaign.rounds
    finals = set(campaign.finals())
    reviewed = [r["id"] for r in campaign.reviews]
    # round 1's budget: 50% of the 10 labeled images, every one drawn at random, each an
    # unreviewed machine label (not an initial final, never twice)
    assert len(reviewed) == 5 and len(set(reviewed)) == 5 and not finals & set(reviewed)
    assert {r["routing"] for r in campaign.reviews} == {"random"}
    assert all(r["was_wrong"] in (True, False) for r in campaign.reviews)
    assert status["reviews"] == {"verifier": 0, "random": 5}
    # touched = (finals + reviews) / training images, as the round saw it
    assert first["touched_fraction"] == 2 / 10
    assert second["touched_fraction"] == (2 + 5) / 10
    # no random review before round 1's E-step: the estimate says why it has no numbers
    early = first["em"]["remaining_errors"]
    assert early["meaningful"] is False and early["probably_wrong"] is None
    assert "needs 5" in early["reason"]
    late = second["em"]["remaining_errors"]
    assert late["meaningful"] is True and late["n_random_reviews"] == 5
    low, high = late["probably_wrong_interval"]
    assert 0 <= low <= late["probably_wrong"] <= high <= late["n_unreviewed"]
    assert 0 <= late["reviews_needed"] <= late["n_unreviewed"]
    assert status["remaining_errors"]["meaningful"] is True
    # every training image has a label by round 2 (pseudo-labels for none were needed here)
    assert second["labeled"] == 10 and 0 < second["label_dice"] <= 1
    assert 0 <= second["test_dice"] <= 1 and len(second["test_dice_per_image"]) == 2


def test_unlabeled_images_get_judged_pseudo_labels_a_human_can_review(tmp_path):
    import dataclasses

    dataset = phantoms(tmp_path / "data", n_train=8, n_test=1, seed=1, shape=(32, 32, 24))
    dataset = dataclasses.replace(  # scenario A: finals and unlabeled images only
        dataset, train=[dataclasses.replace(c, noisy=None) for c in dataset.train]
    )
    campaign = tiny_campaign(dataset, tmp_path / "run", routing="verifier", review_budget=0.25)
    with campaign.server() as server:
        client = MONAILabelClient(server_url=server.url, tmpdir=str(tmp_path))
        campaign.start_labels(client)
        campaign.run_rounds(client)
        objects = client.datastore()["objects"]

    first, _ = campaign.rounds
    unlabeled = {c.id for c in dataset.train} - set(campaign.finals())
    # the E-step judged a pseudo-label of every unlabeled image, and each is stored
    assert first["em"]["accepted"] + first["em"]["corrected"] + first["em"]["queued"] == 6
    assert first["labeled"] == 8
    for image_id in unlabeled:
        kinds = {e["info"]["emlabel"]["kind"] for e in objects[image_id]["labels"].values()}
        assert "pseudo" in kinds, kinds
    # the strategy routed two of them (25% of 8) by the verifier; each saved truth is a review
    assert [r["routing"] for r in campaign.reviews] == ["verifier", "verifier"]
    assert {r["id"] for r in campaign.reviews} <= unlabeled
    assert all(isinstance(r["was_wrong"], bool) for r in campaign.reviews)
