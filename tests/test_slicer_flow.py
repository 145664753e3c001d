"""3D Slicer's MONAI Label module, played over the protocol with MONAILabelClient.

Slicer cannot run here; its module speaks the same REST protocol as this client. The
annotator: connect, list models, next sample (verifier strategy), run infer, edit the
label, save it as final, start training, poll until done.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from tests.test_server import post_json, wait_for_training

pytestmark = pytest.mark.server


def test_an_annotators_session(server, tmp_path):
    client = MONAILabelClient(server_url=server.url, tmpdir=str(tmp_path))
    info = client.info()  # "connect"
    assert {"segmentation", "aide", "cgs", "stats"} <= set(info["models"])
    assert "verifier" in info["strategies"]

    client.train_start("segmentation", {"max_epochs": 2})  # a first model to work with
    assert wait_for_training(client)["status"] == "DONE"
    assert post_json(f"{server.url}/scoring/verifier?run_sync=true")[0] == 200

    sample = client.next_sample("verifier", {})  # "Next Sample"
    image_id = sample["id"]
    assert sample["reasons"], sample
    path, _ = client.infer("segmentation", image_id, {})  # "Run" auto-segmentation
    label = nib.load(path)
    edited = np.asarray(label.dataobj).astype(np.uint8)
    edited[:2] = 0  # the annotator erases a few wrong slices
    edited_path = tmp_path / "edited.nii.gz"
    nib.save(
        nib.Nifti1Image(edited, nib.load(server.studies / f"{image_id}.nii.gz").affine), edited_path
    )
    saved = client.save_label(image_id, str(edited_path), tag="final")  # "Submit Label"
    assert saved["image"] == image_id and "review" in saved

    client.train_start("segmentation", {"max_epochs": 1})  # "Update Model"
    assert client.train_status(check_if_running=True) in (True, False)
    status = wait_for_training(client)
    assert status["status"] == "DONE"
    sources = client.info()["train_stats"]["segmentation"]["label_sources"]
    assert sources["human"] == 3  # the new final is used for training
