"""Incremental verifier scoring: only changed labels are judged again, never on a click."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import urllib.error
import urllib.request

import pytest
from monailabel.client import MONAILabelClient

from emlabel.errors import InvalidRequestError
from emlabel.labels import LabelKind, LabelVersion, Provenance
from emlabel.verify.score_cache import (
    KEY_FIELD,
    ScoringContext,
    force_option,
    score_key,
    stale_images,
)
from tests.support.server import TINY_CONF, running_server
from tests.test_server import post_json, wait_for_training

CONTEXT = ScoringContext(model="segmentation.pt@sha256:aa", learned=None, reviews="r0", iteration=1)
INFO = "emlabel.verifier"


def version(tag: str, kind: LabelKind, number: int = 1, user: str | None = None) -> LabelVersion:
    return LabelVersion(
        "img", tag, Provenance(kind=kind, source=tag, version=number, user=user, time="t")
    )


def test_a_key_changes_with_every_input_of_the_score():
    noisy = version("noisy", LabelKind.IMPORTED)
    key = score_key(noisy, (), CONTEXT)
    assert key == score_key(noisy, (), CONTEXT)  # stable
    changed = [
        score_key(version("noisy", LabelKind.IMPORTED, number=2), (), CONTEXT),
        score_key(noisy, (version("a", LabelKind.HUMAN, user="ann"),), CONTEXT),
        *(
            score_key(noisy, (), dataclasses.replace(CONTEXT, **{field: value}))
            for field, value in (
                ("model", "segmentation.pt@sha256:bb"),
                ("learned", "verifier.pt@sha256:cc"),
                ("reviews", "r1"),
                ("iteration", 2),
            )
        ),
    ]
    assert key not in changed and len(set(changed)) == len(changed)


def test_only_machine_labels_with_another_or_no_key_are_stale():
    noisy = version("noisy", LabelKind.IMPORTED)
    fresh = {INFO: {"score": 0.3, KEY_FIELD: score_key(noisy, (), CONTEXT)}}
    states = {
        "fresh": (fresh, [noisy]),
        "old": ({INFO: {"score": 0.3, KEY_FIELD: "another"}}, [noisy]),
        "never": ({}, [noisy]),
        "human": ({}, [version("final", LabelKind.HUMAN)]),
        "unlabeled": ({}, []),
    }
    assert set(stale_images(states, CONTEXT, info_key=INFO)) == {"old", "never"}
    assert set(stale_images(states, CONTEXT, info_key=INFO, force=True)) == {
        "fresh", "old", "never"
    }  # fmt: skip
    assert not ScoringContext(model=None, learned=None, reviews="", iteration=1).ready


def test_force_must_be_a_boolean():
    assert force_option({}) is False and force_option({"force": True}) is True
    with pytest.raises(InvalidRequestError, match="force"):
        force_option({"force": "yes"})


def scoring_tasks(url: str) -> list[dict]:
    """Every scoring task the server started (MONAI Label's ``GET /scoring/?all=true``)."""
    try:
        with urllib.request.urlopen(f"{url}/scoring/?all=true", timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        assert e.code == 404, e  # no scoring task yet
        return []


def wait_scoring_idle(url: str, timeout: float = 300) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = scoring_tasks(url)
        if all(t["status"] in ("DONE", "ERROR") for t in tasks):
            return tasks
        time.sleep(1)
    raise AssertionError("scoring did not finish")


def verifier_infos(client: MONAILabelClient) -> dict[str, dict]:
    objects = client.datastore()["objects"]
    return {i: o["image"]["info"][INFO] for i, o in objects.items() if INFO in o["image"]["info"]}


@pytest.mark.server
def test_automatic_scoring_judges_only_what_changed_and_never_on_a_click(
    tiny_demo_template, tmp_path
):
    studies = tmp_path / "studies"
    shutil.copytree(tiny_demo_template, studies)
    env = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "true"}  # MONAI Label's default
    conf = TINY_CONF | {"review_budget": "1.0"}  # a sample for every click
    with running_server(studies, tmp_path, conf=conf, env=env) as server:
        client = MONAILabelClient(server_url=server.url, tmpdir=str(tmp_path))
        time.sleep(2)
        # no model yet: start-up scored nothing (stock logged "train ... first" every time)
        assert scoring_tasks(server.url) == []
        assert "train 'verifier'" not in server.log()

        client.train_start("segmentation", {"max_epochs": 1})
        assert wait_for_training(client)["status"] == "DONE"
        tasks = wait_scoring_idle(server.url)  # the training asked for one pass
        assert [t["status"] for t in tasks] == ["DONE"]
        first = verifier_infos(client)
        assert {"case_002", "case_003"} <= set(first)  # the noisy labels, judged
        assert all(v[KEY_FIELD] for v in first.values())

        # "Next Sample" clicks start no scoring process
        for _ in range(2):
            assert client.next_sample("verifier", {}).get("id")
        time.sleep(2)
        assert len(scoring_tasks(server.url)) == 1

        # one label changes: a scoring pass judges that one only
        manifest = json.loads((studies / "emlabel_demo" / "manifest.json").read_text())
        changed = "case_003"
        client.save_label(changed, str(studies / manifest["cases"][changed]["truth"]), tag="noisy")
        code, scores = post_json(f"{server.url}/scoring/verifier?run_sync=true")
        assert code == 200 and set(scores) == set(first), scores
        second = verifier_infos(client)
        assert second[changed][KEY_FIELD] != first[changed][KEY_FIELD]
        assert second[changed]["time"] != first[changed]["time"]
        assert all(second[i] == first[i] for i in first if i != changed)  # not judged again

        # force: every label again; a bad force is refused before any process starts
        code, _ = post_json(f"{server.url}/scoring/verifier?run_sync=true", {"force": True})
        assert code == 200
        assert all(v["time"] != first[i]["time"] for i, v in verifier_infos(client).items())
        code, body = post_json(f"{server.url}/scoring/verifier", {"force": "yes"})
        assert code == 400 and "force" in json.dumps(body)
