"""``emlabel train / em / score / predict``: the server's tasks without a server, on the
same folders a server then reads."""

from __future__ import annotations

import shutil

import nibabel as nib
import pytest
from monailabel.client import MONAILabelClient

from emlabel.cli import main
from emlabel.errors import InvalidRequestError
from emlabel.headless import parse_option
from tests.support.server import TINY_CONF, make_app_dir, running_server


def test_options_are_key_value_pairs_read_as_json_when_they_are():
    assert parse_option("max_epochs=3") == ("max_epochs", 3)
    assert parse_option("learner=aide") == ("learner", "aide")
    assert parse_option("pseudo_labels=false") == ("pseudo_labels", False)
    with pytest.raises(InvalidRequestError, match="KEY=VALUE"):
        parse_option("max_epochs")


def test_progress_is_drawn_inside_the_bars_only(capsys):
    from emlabel.progress import advance, showing_bars

    advance("steps", 1, 2)  # the server: nothing shown
    assert capsys.readouterr().err == ""
    with showing_bars():
        advance("steps", 1, 2)
        advance("steps", 2, 2)
    assert "steps" in (err := capsys.readouterr().err) and "2/2" in err


def test_a_missing_studies_or_app_folder_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(["train", "--studies", str(tmp_path / "nope"), "--method", "segmentation"]) == 2
    assert "studies folder" in capsys.readouterr().err
    assert main(["em", "--studies", str(tmp_path), "--app", str(tmp_path / "no-app")]) == 2
    assert "has no main.py" in capsys.readouterr().err
    assert main(["score", "--studies", str(tmp_path), "--top", "-1"]) == 2
    assert "--top must be 0 or more" in capsys.readouterr().err


@pytest.mark.server
def test_headless_commands_write_what_a_server_on_the_same_folders_serves(
    tiny_demo_template, tmp_path, capsys
):
    studies = tmp_path / "studies"
    shutil.copytree(tiny_demo_template, studies)
    app = make_app_dir(tmp_path)  # the folder running_server(studies, tmp_path) uses
    base = ["--studies", str(studies), "--app", str(app)]
    for key, value in TINY_CONF.items():
        base += ["--conf", key, value]

    # refusals name what is wrong and list what is valid
    assert main(["train", *base, "--method", "no_such_trainer"]) == 2
    err = capsys.readouterr().err
    assert "no_such_trainer" in err and "segmentation" in err
    assert main(["train", *base, "--method", "segmentation", "--option", "max_epochs=-1"]) == 2
    assert "max_epochs" in capsys.readouterr().err
    assert main(["em", *base, "--option", "no_such_option=1"]) == 2
    assert "no_such_option" in capsys.readouterr().err
    assert not (app / "model" / "segmentation.pt").exists()  # nothing was trained

    assert main(["train", *base, "--method", "segmentation", "--option", "max_epochs=1"]) == 0
    out = capsys.readouterr()
    assert "DONE" in out.out and "epochs" in out.err  # summary table, progress bar
    assert (app / "model" / "segmentation.pt").is_file()

    assert main(["em", *base, "--iterations", "1", "--option", "epochs=1"]) == 0
    table = capsys.readouterr().out
    assert "accepted" in table and "\n1 " in table  # one row for iteration 1

    assert main(["score", *base]) == 0
    scored = capsys.readouterr().out
    assert "case_002" in scored and "image(s) scored" in scored

    out_dir = tmp_path / "predicted"
    assert main(["predict", *base, "--model", "segmentation", "--out", str(out_dir)]) == 0
    capsys.readouterr()
    written = sorted(p.name for p in out_dir.iterdir())
    images = sorted(p.name for p in studies.glob("*.nii.gz"))
    assert written == images
    for name in written:
        assert nib.load(out_dir / name).shape == nib.load(studies / name).shape

    # a server on the same folders sees the models, the em run and the scores
    with running_server(studies, tmp_path) as server:
        client = MONAILabelClient(server_url=server.url, tmpdir=str(tmp_path))
        stats = client.info()["train_stats"]
        assert stats["segmentation"]["state"] == "DONE" and stats["em"]["iterations"]
        objects = client.datastore()["objects"]
        assert "emlabel.verifier" in objects["case_002"]["image"]["info"]
        assert any(tag.startswith("pseudo") or tag.startswith("em-") for o in objects.values()
                   for tag in o["labels"])  # fmt: skip
        path, _ = client.infer("segmentation", "case_002", {})
        assert nib.load(path).shape == nib.load(studies / "case_002.nii.gz").shape
