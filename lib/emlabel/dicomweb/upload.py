"""Put a local studies folder on a DICOMweb server: images as CT series, finals as DICOM-SEG.

Why: DICOMweb mode serves what is on the server, so the demo (or any studies folder) is
converted and uploaded once. Series UIDs are derived from the image id and a SEG is only
uploaded for an image that has none yet, so running this again adds nothing. Only human
``final`` labels become SEGs (MONAI Label's DICOMweb datastore reads SEGs as final labels);
other label versions stay in the local folder.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from emlabel.dicomweb.dcmqi import ensure_dcmqi
from emlabel.dicomweb.orthanc import OrthancError, seg_references, upload_instance
from emlabel.dicomweb.seg import (
    SERIES_DESCRIPTION,
    present_values,
    segment_infos,
    stamp_creation_time,
)
from emlabel.dicomweb.series import SeriesIds, write_dicom_series
from emlabel.errors import NotFoundError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


@dataclass(frozen=True, kw_only=True)
class UploadedImage:
    """What one image became on the server."""

    ids: SeriesIds
    seg_series_uid: str | None
    """The SEG of its final label (None: no final label, or it was already there)."""


def image_files(studies: Path) -> dict[str, Path]:
    """Image id -> file for the images at the top of a studies folder."""
    found = {}
    for path in sorted(studies.iterdir()):
        for suffix in IMAGE_SUFFIXES:
            if path.is_file() and path.name.endswith(suffix):
                found[path.name.removesuffix(suffix)] = path
    return found


def final_label(studies: Path, image_id: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        path = studies / "labels" / "final" / f"{image_id}{suffix}"
        if path.is_file():
            return path
    return None


def write_seg(
    series_dir: Path,
    label: Path,
    labels: Sequence[str],
    *,
    description: str = SERIES_DESCRIPTION,
    creator: str | None = None,
) -> Path | None:
    """DICOM-SEG of ``label`` referencing the series in ``series_dir`` (None: empty label),
    with SeriesDescription ``description`` and (``creator``) ContentCreatorName."""
    from monailabel.datastore.utils.convert import nifti_to_dicom_seg

    ensure_dcmqi()
    values = present_values(label)
    if not values:
        return None
    infos = segment_infos(values, labels, description=description)
    out = nifti_to_dicom_seg(str(series_dir), str(label), infos)
    if not out or not Path(out).is_file() or Path(out).stat().st_size == 0:
        raise OrthancError(f"itkimage2segimage could not convert {label.name} to DICOM-SEG")
    stamp_creation_time(out, creator=creator)
    return Path(out)


def upload_studies(
    studies: str | Path,
    orthanc_url: str,
    *,
    labels: Sequence[str],
    with_final_labels: bool = True,
) -> dict[str, UploadedImage]:
    """Upload every image of ``studies`` (and its final label as SEG) to Orthanc."""
    studies = Path(studies)
    if not studies.is_dir():
        raise NotFoundError(f"studies folder {studies} does not exist or is not a folder")
    existing_segs = set(seg_references(orthanc_url).values()) if with_final_labels else set()
    uploaded = {}
    with tempfile.TemporaryDirectory(prefix="emlabel-dicom-") as tmp:
        for image_id, path in image_files(studies).items():
            ids = SeriesIds.for_image(image_id)
            series_dir = Path(tmp) / image_id
            for file in write_dicom_series(path, series_dir, ids):
                upload_instance(orthanc_url, file)
            seg_uid = None
            label = final_label(studies, image_id) if with_final_labels else None
            if label is not None and ids.series_uid not in existing_segs:
                seg = write_seg(series_dir, label, labels)
                if seg is not None:
                    upload_instance(orthanc_url, seg)
                    seg_uid = str(dcmread(seg, stop_before_pixels=True).SeriesInstanceUID)
                    seg.unlink()
            uploaded[image_id] = UploadedImage(ids=ids, seg_series_uid=seg_uid)
            logger.info("uploaded %s as series %s", image_id, ids.series_uid)
    return uploaded
