"""DICOMweb mode against a real Orthanc: images are DICOM series, finals are DICOM-SEG.

One Orthanc + EMLabel stack per session (``dicomweb`` fixture in conftest.py): the tiny
demo is converted to CT series and uploaded with its two final labels as DICOM-SEG, and
EMLabel is started with ``--studies http://127.0.0.1:<port>/dicom-web``. The tests run in
file order on that shared state.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from emlabel.dicomweb.orthanc import find_series, get_json, seg_references
from emlabel.dicomweb.seg import seg_to_label
from emlabel.settings import parse_settings
from tests.support.dicomweb import train_sync
from tests.test_server import status_of, write_label

pytestmark = pytest.mark.server

LABELED_IMAGE = "case_004"  # no label in the demo; the tests save finals for it


@pytest.fixture(scope="module")
def client(dicomweb, tmp_path_factory) -> MONAILabelClient:
    return MONAILabelClient(
        server_url=dicomweb.server.url, tmpdir=str(tmp_path_factory.mktemp("client"))
    )


def truth(stack, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The demo's clean label of ``image_id`` (array, affine)."""
    img = nib.load(stack.studies / "emlabel_demo" / "truth" / f"{image_id}.nii.gz")
    return np.asarray(img.dataobj).astype(np.uint8), img.affine


def seg_count(stack) -> int:
    return len(find_series(stack.orthanc.url, Modality="SEG"))


def labels_of(client: MONAILabelClient, series_uid: str) -> dict:
    return client.datastore()["objects"][series_uid]["labels"]


def all_labels(client: MONAILabelClient) -> dict[str, dict]:
    return {k: v["labels"] for k, v in client.datastore()["objects"].items()}


def seg_file(stack, seg_uid: str, dest: Path) -> Path:
    """Download a SEG instance from Orthanc's REST API."""
    series = find_series(stack.orthanc.url, SeriesInstanceUID=seg_uid)
    assert len(series) == 1, seg_uid
    instance = series[0]["Instances"][0]
    with urllib.request.urlopen(f"{stack.orthanc.url}/instances/{instance}/file") as r:
        dest.write_bytes(r.read())
    return dest


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this host other than loopback (None if it has none)."""
    candidates = []
    with contextlib.suppress(OSError):
        candidates += [
            a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.connect(("198.51.100.1", 9))  # routing only: UDP connect sends no packet
        candidates.append(s.getsockname()[0])
    return next((a for a in candidates if not a.startswith(("127.", "0."))), None)


def test_orthanc_serves_this_host_only(dicomweb):
    config = json.loads(dicomweb.orthanc.config.config_path.read_text())
    assert config["RemoteAccessAllowed"] is False and config["DicomServerEnabled"] is False
    assert get_json(dicomweb.orthanc.url, "/system")["Name"] == dicomweb.orthanc.config.name
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to test remote access from")
    port = dicomweb.orthanc.config.http_port
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/system", timeout=5) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = None  # refused outright: fine too
    assert status in (None, 401, 403), f"Orthanc answered {status} to a non-loopback client"


def test_images_are_the_uploaded_series_and_demo_finals_count_as_labeled(dicomweb, client):
    info = client.info()
    assert isinstance(info["labels"], list)  # OHIF's panel needs a list
    assert info["datastore"]["total"] == len(dicomweb.uploaded) == 6
    assert info["datastore"]["completed"] == 2  # the demo's finals, uploaded as DICOM-SEG
    assert len(seg_references(dicomweb.orthanc.url)) == 2


def test_upload_again_adds_nothing(dicomweb):
    before = find_series(dicomweb.orthanc.url)
    subprocess.run(
        [sys.executable, "-m", "emlabel.cli", "dicomweb-upload",
         "--studies", str(dicomweb.studies), "--url", dicomweb.orthanc.url],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    after = find_series(dicomweb.orthanc.url)
    assert sorted(s["ID"] for s in after) == sorted(s["ID"] for s in before)


def test_a_final_label_is_stored_as_dicom_seg_and_a_second_one_keeps_the_first(
    dicomweb, client, tmp_path
):
    series = dicomweb.series(LABELED_IMAGE)
    label, affine = truth(dicomweb, LABELED_IMAGE)
    first = write_label(tmp_path / "first.nii.gz", label, affine)
    saved = client.save_label(series, first, tag="final")
    assert saved["image"] == series

    refs = seg_references(dicomweb.orthanc.url)
    first_seg = [seg for seg, image in refs.items() if image == series]
    assert len(first_seg) == 1  # a DICOM-SEG referencing the image series is in Orthanc
    final = labels_of(client, series)["final"]["info"]
    assert final["SeriesInstanceUID"] == first_seg[0] and final["Modality"] == "SEG"
    assert final["emlabel"]["kind"] == "human" and final["emlabel"]["version"] == 1

    # The SEG holds the label: every structure, mapped back by name onto the image grid.
    image = dicomweb.cache / next(p.name for p in dicomweb.cache.iterdir()) / f"{series}.nii.gz"
    back = seg_to_label(
        seg_file(dicomweb, first_seg[0], tmp_path / "seg.dcm"), image, tmp_path / "back.nii.gz",
        label_map=parse_settings({}).label_map,
    )  # fmt: skip
    assert np.array_equal(np.asarray(nib.load(back).dataobj), label)

    edited = label.copy()
    edited[edited == 1] = 0  # the annotator removes the liver
    client.save_label(series, write_label(tmp_path / "second.nii.gz", edited, affine), tag="final")
    segs = [seg for seg, image in seg_references(dicomweb.orthanc.url).items() if image == series]
    assert len(segs) == 2  # both SEGs stay in Orthanc
    labels = labels_of(client, series)
    assert labels["final"]["info"]["emlabel"]["version"] == 2
    assert labels["final"]["info"]["SeriesInstanceUID"] in set(segs) - set(first_seg)
    archived = labels["final-v001"]["info"]
    assert archived["emlabel"]["archived"] is True
    assert archived["SeriesInstanceUID"] == first_seg[0]  # the version remembers its SEG


def test_bad_labels_are_refused_and_nothing_is_stored(dicomweb, client, tmp_path):
    series = dicomweb.series("case_005")
    label, affine = truth(dicomweb, "case_005")
    fractional = label.astype(np.float32)
    fractional[0, 0, 0] = 0.5
    text = tmp_path / "text.nii.gz"
    text.write_text("not a NIfTI file")
    bad = {
        "text file": (series, str(text), "final", 422),
        "wrong shape": (
            series, write_label(tmp_path / "s.nii.gz", np.zeros((4, 4, 4), np.uint8), affine),
            "final", 422,
        ),
        "non-integer": (series, write_label(tmp_path / "f.nii.gz", fractional, affine), "final", 422),
        "outside label map": (
            series, write_label(tmp_path / "b.nii.gz", np.full(label.shape, 42, np.uint8), affine),
            "final", 422,
        ),
        "unknown series": ("1.2.3.4.5", str(text), "final", 404),
        "path as id": ("../../etc/passwd", str(text), "final", 400),
        "reserved tag": (
            series, write_label(tmp_path / "g.nii.gz", label, affine), "final-v007", 400,
        ),
    }  # fmt: skip
    segs_before = seg_count(dicomweb)
    labels_before = all_labels(client)
    for name, (image, path, tag, expected) in bad.items():
        code, body = status_of(lambda i=image, p=path, t=tag: client.save_label(i, p, tag=t))
        assert code == expected, (name, body)
        assert "detail" in body, name
    assert seg_count(dicomweb) == segs_before  # nothing reached Orthanc
    # The image may now be cached (validation needs it), but no label version was stored.
    labels_after = all_labels(client)
    assert {k: v for k, v in labels_after.items() if k in labels_before} == labels_before
    assert all(not labels_after[k] for k in set(labels_after) - set(labels_before))
    code, body = status_of(lambda: client.infer("segmentation", "1.2.3.4.5", {}))
    assert code == 404 and "1.2.3.4.5" in body


def test_training_reads_the_final_labels_from_dicom_seg(dicomweb, client):
    stats = train_sync(dicomweb.server, max_epochs=1)
    # 2 demo finals uploaded straight to Orthanc (taken in as versions) + the one saved above
    assert stats["label_sources"] == {"human": 3}, stats
    case_000 = labels_of(client, dicomweb.series("case_000"))["final"]["info"]
    assert case_000["emlabel"]["source"] == "dicomweb"
    assert case_000["SeriesInstanceUID"] == dicomweb.uploaded["case_000"].seg_series_uid


def test_a_fresh_cache_rebuilds_the_versions_from_orthanc(dicomweb, tmp_path):
    """The SEGs alone give back every final, the older one archived (nothing deleted)."""
    from monailabel.datastore.dicom import DICOMwebClientX

    from emlabel.monailabel.dicomweb import VersionedDICOMWebDatastore

    store = VersionedDICOMWebDatastore(
        DICOMwebClientX(url=dicomweb.orthanc.dicomweb_url),
        settings=parse_settings({}),
        cache_path=tmp_path / "cache",
        search_filter={"Modality": "CT"},
    )
    try:
        stored = store.sync_labels()
        assert len(stored) == 4  # case_000, case_001, and two for case_004
        series = dicomweb.series(LABELED_IMAGE)
        versions = store.versions(series)
        assert [v.tag for v in versions] == ["final-v001", "final"]
        label, _ = truth(dicomweb, LABELED_IMAGE)
        newest = np.asarray(nib.load(store.get_label_uri(series, "final")).dataobj)
        oldest = np.asarray(nib.load(store.get_label_uri(series, "final-v001")).dataobj)
        assert np.array_equal(oldest, label)
        assert np.array_equal(newest, np.where(label == 1, 0, label))
        assert store.sync_labels() == []  # taken in once
        assert store.best_label(series).tag == "final"
    finally:
        observer = getattr(store, "_observer", None)
        if observer is not None:
            observer.stop()


def store_altered_seg(stack, tmp_path: Path, name: str, change) -> str:
    """Store in Orthanc, as another client would, a copy of case_000's SEG altered by
    ``change(dataset)`` (a new series); its series UID."""
    import pydicom
    from pydicom.uid import generate_uid

    src = seg_file(stack, stack.uploaded["case_000"].seg_series_uid, tmp_path / f"{name}-0.dcm")
    ds = pydicom.dcmread(src)
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    change(ds)
    out = tmp_path / f"{name}.dcm"
    ds.save_as(out)
    request = urllib.request.Request(f"{stack.orthanc.url}/instances", data=out.read_bytes(),
                                     method="POST", headers={"Content-Type": "application/dicom"})  # fmt: skip
    with urllib.request.urlopen(request) as r:
        assert r.status == 200
    return str(ds.SeriesInstanceUID)


def test_segs_that_cannot_be_labels_are_not_taken_in_and_the_review_page_shows_why(
    dicomweb, client, tmp_path
):
    import time

    def rename(ds) -> None:  # a structure the app does not have
        ds.SegmentSequence[0].SegmentLabel = "tumour"

    def move_away(ds) -> None:  # 5 m off: not on the image's grid
        for frame in ds.PerFrameFunctionalGroupsSequence:
            position = frame.PlanePositionSequence[0]
            position.ImagePositionPatient = [
                float(v) + 5000.0 for v in position.ImagePositionPatient
            ]

    def erase(ds) -> None:  # every frame blank
        ds.PixelData = bytes(len(ds.PixelData))

    before = all_labels(client)
    uids = {name: store_altered_seg(dicomweb, tmp_path, name, change)
            for name, change in (("unknown", rename), ("offgrid", move_away), ("empty", erase))}  # fmt: skip
    deadline = time.monotonic() + 60  # the server's SEG listing is cached for a few seconds
    while True:
        with urllib.request.urlopen(f"{dicomweb.server.url}/emlabel/review/") as r:
            section = r.read().decode("utf-8").split("<h2>Labels not taken in</h2>", 1)[1]
        if all(uid in section for uid in uids.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert uids["unknown"] in section and "named &#x27;tumour&#x27;" in section, section
    assert uids["offgrid"] in section and "does not lie on its image" in section, section
    assert uids["empty"] in section and "no labeled voxel" in section, section
    assert all_labels(client) == before  # none became a version
    # judged once: a training's sync neither takes them in nor judges them again
    train_sync(dicomweb.server, max_epochs=1)
    assert {k: set(v) for k, v in all_labels(client).items()} == {
        k: set(v) for k, v in before.items()
    }


def test_a_routed_label_goes_to_orthanc_for_review_and_a_viewers_edit_of_it_is_the_review(
    dicomweb, client, tmp_path
):
    """The label under review is put in Orthanc as a SEG (never taken in: machine output);
    a viewer that loads it, erases part and saves a new SEG gives the final and the review."""
    import time

    import pydicom
    from pydicom.uid import generate_uid

    from tests.test_em_server import post_json

    manifest = json.loads((dicomweb.studies / "emlabel_demo" / "manifest.json").read_text())
    case_id, case = next((k, c) for k, c in sorted(manifest["cases"].items())
                         if c.get("noisy") and c["role"] != "final" and k != LABELED_IMAGE)  # fmt: skip
    series = dicomweb.series(case_id)
    client.save_label(series, str(dicomweb.studies / case["noisy"]), tag="noisy")
    train_sync(dicomweb.server, max_epochs=1)
    code, scores = post_json(f"{dicomweb.server.url}/scoring/verifier?run_sync=true")
    assert code == 200 and series in scores, scores

    sample = client.next_sample("verifier", {})
    assert sample["id"] == series and sample["label_tag"] == "noisy"
    offered = sample["review_seg"]
    assert offered["SeriesDescription"] == "EMLabel noisy for review"
    on_server = find_series(dicomweb.orthanc.url, SeriesInstanceUID=offered["SeriesInstanceUID"])
    assert len(on_server) == 1  # in Orthanc, in the image's study
    assert offered["StudyInstanceUID"] == dicomweb.study(case_id)
    machine_seg = pydicom.dcmread(
        seg_file(dicomweb, offered["SeriesInstanceUID"], tmp_path / "m.dcm")
    )
    assert machine_seg.SeriesDescription == "EMLabel noisy for review"

    # the viewer: load it, erase the second half of its frames, save as a new SEG
    edited = machine_seg.copy()
    half = len(edited.PixelData) // 2
    edited.PixelData = edited.PixelData[:half] + bytes(len(edited.PixelData) - half)
    edited.SeriesInstanceUID = generate_uid()
    edited.SOPInstanceUID = edited.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    edited.ContentCreatorName = "annotator^ohif"
    edited.SeriesDescription = "Segmentation"
    out = tmp_path / "edited.dcm"
    edited.save_as(out)
    request = urllib.request.Request(f"{dicomweb.orthanc.url}/instances", data=out.read_bytes(),
                                     method="POST", headers={"Content-Type": "application/dicom"})  # fmt: skip
    urllib.request.urlopen(request).close()

    deadline = time.monotonic() + 60  # taken in on the next sync after the listing cache
    while "final" not in labels_of(client, series) and time.monotonic() < deadline:
        urllib.request.urlopen(f"{dicomweb.server.url}/emlabel/review/").close()  # syncs
        time.sleep(2)
    final = labels_of(client, series)["final"]["info"]
    assert final["SeriesInstanceUID"] == str(edited.SeriesInstanceUID)  # the edit, not the offer
    assert final["emlabel"]["source"] == "dicomweb" and final["emlabel"]["kind"] == "human"
    review = client.datastore()["objects"][series]["image"]["info"]["emlabel.review"]
    assert "reviewed" in review and 0.0 < review["dice"] < 1.0, review
    assert review["was_wrong"] is (review["dice"] < 0.9)  # review_wrong_dice
    records = json.loads((dicomweb.server.app_dir / "model" / "em_reviews.json").read_text())
    assert [r["image_id"] for r in records] == [series]
    # the machine label's SEG itself never became a version
    uids = {v["info"].get("SeriesInstanceUID") for v in labels_of(client, series).values()}
    assert offered["SeriesInstanceUID"] not in uids
