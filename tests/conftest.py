"""Shared fixtures: tiny demo studies, the real server, paths to ../shared/data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import REPO, RunningServer, running_server

os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")

TINY_SHAPE = (40, 40, 32)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (skips when absent)."""
    path = REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is not available")
    return path


def write_tiny_demo(out: Path, *, n: int = 6, seed: int = 0) -> dict:
    """A small demo studies folder (noisy labels imported) for tests."""
    from emlabel.cli import import_demo_noisy_labels
    from emlabel.data.demo import DemoOptions, write_demo_studies
    from emlabel.data.phantoms import PhantomOptions

    options = DemoOptions(
        n=n, seed=seed, n_final=2, n_unlabeled=2, phantom=PhantomOptions(shape=TINY_SHAPE)
    )
    manifest = write_demo_studies(out, options)
    import_demo_noisy_labels(out, manifest)
    return manifest


@pytest.fixture(scope="session")
def tiny_demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Written once per session; tests copy it."""
    out = tmp_path_factory.mktemp("demo-template") / "studies"
    write_tiny_demo(out)
    return out


@pytest.fixture
def tiny_studies(tiny_demo_template: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny demo studies folder."""
    dest = tmp_path / "studies"
    shutil.copytree(tiny_demo_template, dest)
    return dest


@pytest.fixture(scope="module")
def server(
    tiny_demo_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The real EMLabel server over a private copy of the tiny demo (one per test module)."""
    work = tmp_path_factory.mktemp("server")
    studies = work / "studies"
    shutil.copytree(tiny_demo_template, studies)
    with running_server(studies, work) as running:
        yield running


@pytest.fixture(scope="session")
def dicomweb(tiny_demo_template: Path, tmp_path_factory: pytest.TempPathFactory):
    """Orthanc + the tiny demo as DICOM + EMLabel on Orthanc's DICOMweb URL (one per session).

    Fails when Orthanc or dcmqi is missing (skips only with EMLABEL_SKIP_VIEWER_TESTS=1).
    """
    from tests.support.dicomweb import dicomweb_stack, require_tools

    require_tools(browser=False)
    with dicomweb_stack(tiny_demo_template, tmp_path_factory.mktemp("dicomweb")) as stack:
        yield stack
