"""DICOMweb helpers refuse bad input with a clear error, without needing Orthanc."""

from __future__ import annotations

import subprocess
import sys

import pytest

from emlabel.dicomweb.orthanc import OrthancError, get_json
from emlabel.dicomweb.upload import upload_studies
from emlabel.errors import NotFoundError
from tests.support.server import free_port


def test_unreachable_orthanc_is_an_orthanc_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(OrthancError, match=f"Orthanc at {url} is unreachable"):
        get_json(url, "/system", timeout=5)


def test_upload_of_a_missing_studies_folder_is_refused(tmp_path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        upload_studies(tmp_path / "nope", "http://127.0.0.1:1", labels=["liver"])


def test_cli_reports_bad_upload_input_without_a_traceback(tmp_path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "emlabel.cli", "dicomweb-upload", "--studies", str(tmp_path),
         "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0
    assert "unreachable" in run.stderr and "Traceback" not in run.stderr
