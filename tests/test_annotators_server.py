"""Many annotators through the real server: a second user's import is kept beside the first,
and the verifier's reasons say that the annotators disagree."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from emlabel.cli import main
from tests.test_server import post_json, wait_for_training

pytestmark = pytest.mark.server


def test_a_second_annotators_disagreeing_label_shows_in_the_verifier_reasons(
    server, tmp_path, capsys
):
    client = MONAILabelClient(server_url=server.url, tmpdir=str(server.app_dir.parent))
    manifest = json.loads((server.studies / "emlabel_demo" / "manifest.json").read_text())
    noisy = sorted(i for i, case in manifest["cases"].items() if case.get("noisy"))

    def array(path) -> np.ndarray:
        return np.asarray(nib.load(path).dataobj)

    # an image whose imported (noisy) label is wrong; a careful second annotator saves the truth
    image_id = next(
        i
        for i in noisy
        if not np.array_equal(
            array(server.studies / manifest["cases"][i]["truth"]),
            array(server.studies / "labels" / "noisy" / f"{i}.nii.gz"),
        )
    )
    other = next(i for i in noisy if i != image_id)
    bob = tmp_path / "bob" / f"{image_id}.nii.gz"
    bob.parent.mkdir()
    shutil.copy(server.studies / manifest["cases"][image_id]["truth"], bob)
    # `emlabel import-labels` on the served folder (in this process: same files and locks)
    assert main(["import-labels", "--studies", str(server.studies), "--user", "bob", str(bob)]) == 0
    out = capsys.readouterr().out
    assert f"{image_id}: stored as tag 'noisy'" in out and "user 'bob'" in out

    labels = client.datastore()["objects"][image_id]["labels"]
    users = {tag: label["info"]["emlabel"]["user"] for tag, label in labels.items()}
    assert sorted(users.values()) == ["bob", "emlabel-demo"]  # both kept, each with its user
    assert users["noisy"] == "bob"  # the newest import is the current label

    client.train_start("segmentation", {"max_epochs": 1})
    assert wait_for_training(client)["status"] == "DONE"
    code, scores = post_json(f"{server.url}/scoring/verifier?run_sync=true")
    assert code == 200 and image_id in scores, scores

    def verdict(i: str) -> dict:
        return client.datastore()["objects"][i]["image"]["info"]["emlabel.verifier"]

    judged = verdict(image_id)
    assert any("annotators disagree" in r and "(2 annotators" in r for r in judged["reasons"])
    assert {f["n_annotators"] for f in judged["features"].values()} == {2}
    assert min(f["annotator_agreement"] for f in judged["features"].values()) < 0.9
    alone = verdict(other)  # one user only: no agreement to measure, no such reason
    assert not any("annotators" in r for r in alone["reasons"])
    assert {f["annotator_agreement"] for f in alone["features"].values()} == {None}
