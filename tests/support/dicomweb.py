"""DICOMweb test stack: a real Orthanc, the tiny demo uploaded, EMLabel on its DICOMweb URL.

The viewer tests need Debian's ``orthanc``, ``orthanc-dicomweb`` and ``chromium`` and the pip
packages ``dcmqi`` and ``playwright``. A missing tool fails the test with the command that
installs it; only ``EMLABEL_SKIP_VIEWER_TESTS=1`` turns that into an explicit skip.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from emlabel.dicomweb.dcmqi import TOOL as DCMQI_TOOL
from emlabel.dicomweb.orthanc import (
    DICOMWEB_PLUGIN,
    OrthancConfig,
    OrthancProcess,
    start_orthanc,
)
from emlabel.dicomweb.serve import server_environment
from emlabel.dicomweb.upload import UploadedImage, upload_studies
from emlabel.settings import parse_settings
from tests.support.server import REPO, RunningServer, free_port, running_server

CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium driven by Playwright (see ../shared/STACK.md); never `playwright install`.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SKIP_ENV = "EMLABEL_SKIP_VIEWER_TESTS"
APT = "apt-get install -y chromium orthanc orthanc-dicomweb"


def artifacts_dir() -> Path:
    """Where viewer tests leave screenshots (``$EMLABEL_TEST_ARTIFACTS`` or ``test-artifacts/``)."""
    path = Path(os.environ.get("EMLABEL_TEST_ARTIFACTS", REPO / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def missing_tools(*, browser: bool) -> list[str]:
    """What the DICOMweb (and, with ``browser``, the OHIF) tests need but this machine lacks."""
    missing = []
    if not (shutil.which("Orthanc") or Path("/usr/sbin/Orthanc").is_file()):
        missing.append(f"Orthanc (Debian package orthanc; {APT})")
    if not DICOMWEB_PLUGIN.is_file():
        missing.append(f"{DICOMWEB_PLUGIN} (Debian package orthanc-dicomweb; {APT})")
    venv_tool = Path(sys.executable).parent / DCMQI_TOOL
    if not (shutil.which(DCMQI_TOOL) or venv_tool.is_file()):
        missing.append(f"{DCMQI_TOOL} (pip package dcmqi, in requirements.txt)")
    if browser:
        if not CHROMIUM.is_file():
            missing.append(f"{CHROMIUM} (Debian package chromium; {APT})")
        if importlib.util.find_spec("playwright") is None:
            missing.append("playwright (pip package, in requirements-dev.txt)")
    return missing


def require_tools(*, browser: bool) -> None:
    """Fail (never skip silently) when a tool is missing, unless skipping was asked for."""
    missing = missing_tools(browser=browser)
    if not missing:
        return
    message = "viewer test tools missing: " + "; ".join(missing)
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{message} ({SKIP_ENV}=1)")
    pytest.fail(f"{message}. Install them, or set {SKIP_ENV}=1 to skip these tests explicitly.")


@dataclass
class DICOMwebStack:
    """Orthanc with the tiny demo uploaded, and EMLabel serving its DICOMweb URL."""

    orthanc: OrthancProcess
    server: RunningServer
    uploaded: dict[str, UploadedImage]
    studies: Path
    """The local tiny demo that was uploaded (for truth labels)."""
    cache: Path

    def series(self, image_id: str) -> str:
        return self.uploaded[image_id].ids.series_uid

    def study(self, image_id: str) -> str:
        return self.uploaded[image_id].ids.study_uid


@contextlib.contextmanager
def dicomweb_stack(studies: Path, workdir: Path) -> Iterator[DICOMwebStack]:
    """Start Orthanc on a free port, upload ``studies``, start EMLabel on its DICOMweb URL."""
    config = OrthancConfig(work_dir=workdir / "orthanc", http_port=free_port())
    with start_orthanc(config) as orthanc:
        labels = parse_settings({}).labels
        uploaded = upload_studies(studies, orthanc.url, labels=labels)
        cache = workdir / "cache"
        env = server_environment(cache)
        env["MONAI_LABEL_DICOMWEB_CACHE_PATH"] = str(cache)  # never the user's cache
        env["MONAI_LABEL_DICOMWEB_CACHE_EXPIRY"] = "5"
        with running_server(orthanc.dicomweb_url, workdir, env=env) as server:
            yield DICOMwebStack(
                orthanc=orthanc, server=server, uploaded=uploaded, studies=studies, cache=cache
            )


def train_sync(server: RunningServer, max_epochs: int, timeout: float = 600) -> dict:
    """Train ``segmentation`` (in the background, as EMLabel requires); its train stats."""
    request = urllib.request.Request(
        f"{server.url}/train/segmentation",
        data=json.dumps({"max_epochs": max_epochs}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        json.loads(response.read())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{server.url}/train/", timeout=60) as response:
            status = json.loads(response.read())
        if status.get("status") not in ("SUBMITTED", "RUNNING", "QUEUED"):
            if status.get("status") != "DONE":
                raise RuntimeError(f"training ended {status.get('status')}: {status}")
            with urllib.request.urlopen(f"{server.url}/info/", timeout=60) as response:
                return json.loads(response.read())["train_stats"]["segmentation"]
        time.sleep(1)
    raise RuntimeError(f"training did not finish in {timeout} s")
