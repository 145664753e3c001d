"""OHIF (the build MONAI Label serves at /ohif/) in Debian's headless Chromium.

An annotator opens a study in OHIF's MONAI Label mode, connects the MONAI Label panel to
EMLabel, and runs ``segmentation`` from Auto-Segmentation. Checked: the infer call's
network response (200, an NRRD label map), the segment list OHIF built (one segment per
app label, by name), that each segment holds exactly the voxels the server labelled with
that structure, and that the viewport lists the segmentation. A screenshot is saved to
``test-artifacts/`` (or ``$EMLABEL_TEST_ARTIFACTS``).

The stock panel has no brush and no save in MONAI Label mode, so saving a final from the
viewer is not tested here (``tests/test_dicomweb.py`` saves finals over REST, as Slicer does).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nrrd
import numpy as np
import pytest

from emlabel.settings import parse_settings
from tests.support.dicomweb import (
    CHROMIUM,
    CHROMIUM_ARGS,
    artifacts_dir,
    require_tools,
    train_sync,
)

pytestmark = [pytest.mark.server, pytest.mark.browser]

IMAGE = "case_005"  # unlabeled in the demo: its study holds the CT series only

# Reads OHIF's segmentation service and counts the voxels of each segment of the labelmap.
SEGMENTS_JS = """() => {
  const service = window.services && window.services.segmentationService;
  if (!service) return null;
  return service.getSegmentations().map(seg => {
    const labelmap = (seg.representationData || {}).Labelmap || {};
    const counts = {};
    const volume = labelmap.volumeId && window.cornerstone.cache.getVolume(labelmap.volumeId);
    if (volume) {
      const data = volume.voxelManager.getCompleteScalarDataArray();
      for (let i = 0; i < data.length; i++) counts[data[i]] = (counts[data[i]] || 0) + 1;
    }
    const segments = Object.values(seg.segments || {}).filter(Boolean)
      .map(s => ({index: s.segmentIndex, label: s.label}));
    return {id: seg.segmentationId, label: seg.label, segments, counts,
            dimensions: volume ? Array.from(volume.dimensions) : null};
  });
}"""


@pytest.fixture(scope="module")
def ohif_stack(request):
    """The session's DICOMweb stack with a trained ``segmentation`` model."""
    require_tools(browser=True)
    stack = request.getfixturevalue("dicomweb")
    train_sync(stack.server, max_epochs=30)  # a few seconds; enough for a visible result
    return stack


def nrrd_counts(body: bytes, tmp_path: Path) -> tuple[tuple[int, ...], dict[int, int]]:
    path = tmp_path / "infer.nrrd"
    path.write_bytes(body)
    data, _ = nrrd.read(str(path))
    values, counts = np.unique(data, return_counts=True)
    return data.shape, {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def test_ohif_runs_segmentation_from_the_monai_label_panel(ohif_stack, tmp_path):
    from playwright.sync_api import sync_playwright

    server = ohif_stack.server.url
    study = ohif_stack.study(IMAGE)
    series = ohif_stack.series(IMAGE)
    label_map = parse_settings({}).label_map
    screenshot = artifacts_dir() / "ohif-segmentation.png"
    timings: dict[str, float] = {}
    start = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{server}/ohif/monai-label?StudyInstanceUIDs={study}")
            url_field = page.locator("#monailabelServerURL")
            url_field.wait_for(timeout=90_000)
            timings["viewer"] = time.monotonic() - start

            # Connect: the panel calls /info/ only when its button is clicked.
            url_field.fill(f"{server}/")
            with page.expect_response(lambda r: r.url.endswith("/info/"), timeout=60_000) as info:
                page.locator(".monaiLabelPanel .actionButton").first.click()
            assert info.value.status == 200
            run = page.locator("button[title='Run Segmentation']")
            run.wait_for(timeout=30_000)
            assert page.locator(".modelSelector select").first.input_value() == "segmentation"

            with page.expect_response(
                lambda r: "/infer/segmentation" in r.url, timeout=120_000
            ) as infer:
                run.click()
            response = infer.value
            timings["infer"] = time.monotonic() - start
            assert response.status == 200, response.text()[:500]
            assert response.request.method == "POST"
            assert f"image={series}" in response.url and "output=image" in response.url
            shape, server_counts = nrrd_counts(response.body(), tmp_path)

            # The segment list OHIF built and the voxels it painted into it.
            deadline = time.monotonic() + 60
            segmentations = None
            while time.monotonic() < deadline:
                segmentations = page.evaluate(SEGMENTS_JS)
                if segmentations and sum(
                    c for v, c in segmentations[0]["counts"].items() if v != "0"
                ):
                    break
                page.wait_for_timeout(500)
            assert segmentations, "OHIF has no segmentation after infer"
            seg = segmentations[0]
            by_name = {s["label"]: s["index"] for s in seg["segments"]}
            assert set(by_name) == set(label_map), seg["segments"]
            assert sorted(seg["dimensions"]) == sorted(shape)
            for name, value in label_map.items():
                painted = seg["counts"].get(str(by_name[name]), 0)
                assert painted == server_counts.get(value, 0), (name, seg["counts"], server_counts)
            assert sum(server_counts.get(v, 0) for v in label_map.values()) > 0

            # The viewport lists the segmentation (its data overlay menu). OHIF's toasts
            # (e.g. "segmentation loaded") cover the buttons until they time out.
            page.wait_for_function(
                "() => document.querySelectorAll('[data-sonner-toast]').length === 0",
                timeout=30_000,
            )
            page.locator("[data-cy='confirm-and-hide-button']").click(timeout=10_000)
            pane = page.locator("[data-cy='viewport-pane']").first
            pane.hover()
            pane.locator("button").first.click()
            menu = page.locator("[role='dialog']").filter(has_text="Current Viewport")
            menu.get_by_text("Segmentations").wait_for(timeout=10_000)
            page.screenshot(path=str(screenshot))  # overlay painted, that menu open
        finally:
            browser.close()
    timings["total"] = time.monotonic() - start
    (artifacts_dir() / "ohif-segmentation.json").write_text(
        json.dumps({"segments": seg["segments"], "server_counts": server_counts,
                    "seconds": timings}, indent=2)
    )  # fmt: skip
    assert screenshot.stat().st_size > 10_000
