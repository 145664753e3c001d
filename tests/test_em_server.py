"""EM and verifier-driven review through the real server (the product's main loop)."""

from __future__ import annotations

import html
import json
import subprocess
import sys
import urllib.request

import pytest
from monailabel.client import MONAILabelClient

from tests.test_server import post_json, status_of, wait_for_training

pytestmark = pytest.mark.server


def review_page(url: str) -> str:
    with urllib.request.urlopen(f"{url}/emlabel/review/", timeout=60) as answer:
        assert answer.status == 200 and answer.headers["content-type"].startswith("text/html")
        return answer.read().decode("utf-8")


def image_info(client: MONAILabelClient, image_id: str) -> dict:
    return client.datastore()["objects"][image_id]["image"]["info"]


def test_score_route_review_and_em_iteration_recalibrates(server):
    client = MONAILabelClient(server_url=server.url, tmpdir=str(server.app_dir.parent))
    info = client.info()
    assert (
        "verifier" in info["scoring"]
        and "verifier" in info["strategies"]
        and "em" in info["trainers"]
    )
    code, body = status_of(lambda: client.train_start("em", {"iterations": 0}))
    assert code == 400 and "iterations" in body

    client.train_start("segmentation", {"max_epochs": 3})
    assert wait_for_training(client)["status"] == "DONE"
    code, scores = post_json(f"{server.url}/scoring/verifier?run_sync=true")
    assert code == 200 and scores, scores
    machine = sorted(scores)  # images whose best label is not human
    assert {"case_002", "case_003"} <= set(machine)
    before = {i: image_info(client, i)["emlabel.verifier"] for i in machine}
    for verdict in before.values():
        assert 0.0 <= verdict["score"] <= 1.0 and verdict["mode"] == "prior"
        assert verdict["label_tag"] == "noisy" and verdict["features"]

    # the review page lists the same cases, least trusted first, with their reasons
    page = review_page(server.url)
    ranked = sorted(scores, key=lambda i: (-scores[i], i))
    assert [page.index(f"<code>{i}</code>") for i in ranked] == sorted(
        page.index(f"<code>{i}</code>") for i in ranked
    )
    first_reason = before[ranked[0]]["reasons"][0]
    assert html.escape(first_reason) in page and "No review saved yet." in page

    # the strategy offers the least trusted label first, with its reasons
    sample = client.next_sample("verifier", {})
    assert sample["id"] == max(scores, key=scores.get)
    assert sample["reasons"] and sample["budget"]["used"] == 1
    # the demo's truth for that image is what a careful annotator would save
    manifest = json.loads((server.studies / "emlabel_demo" / "manifest.json").read_text())
    truth = server.studies / manifest["cases"][sample["id"]]["truth"]
    saved = client.save_label(sample["id"], str(truth), tag="final")
    assert saved["review"]["was_wrong"] is True  # the noisy label really was wrong
    reviews = json.loads((server.app_dir / "model" / "em_reviews.json").read_text())
    assert [r["image_id"] for r in reviews] == [sample["id"]]

    # the budget (5% of the labeled images, at least one) is used: no more samples
    assert client.next_sample("verifier", {}) == {}
    page = review_page(server.url)
    reviewed = page.split("<h2>Reviewed</h2>", 1)[1]
    assert f"<code>{sample['id']}</code>" in reviewed and "the machine label was wrong" in reviewed
    assert "review budget 1 of 1 used" in page

    client.train_start("em", {"iterations": 1, "epochs": 1})
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    stats = client.info()["train_stats"]["em"]
    row = stats["iterations"][0]
    assert row["iteration"] == 1 and stats["reviews"] == 1
    assert row["accepted"] + row["corrected"] + row["queued"] == row["verified"]
    quality = subprocess.run(
        [sys.executable, "-m", "emlabel.cli", "demo-quality", "--studies", str(server.studies)],
        capture_output=True,
        text=True,
        check=True,
    )  # the demo's own tooling reads its truth; the app never does
    assert 0.0 < json.loads(quality.stdout)["label_quality_vs_truth"] <= 1.0
    other = next(i for i in machine if i != sample["id"])
    after = image_info(client, other)["emlabel.verifier"]
    assert "recalibrated" in after["calibration"] or after["mode"].startswith("fitted")
    assert after["score"] != before[other]["score"]  # same model, new calibration
    assert after["action"] in ("accept", "correct", "review")
    # the reviewed image's final label is now the best label; EM leaves it alone
    labels = client.datastore()["objects"][sample["id"]]["labels"]
    assert not any(tag.startswith("em-v") for tag in labels)
