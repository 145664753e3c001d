"""Write a 3D volume as a DICOM CT series (one file per slice) with SimpleITK.

Why: Orthanc and OHIF speak DICOM, the demo studies are NIfTI. The series keeps the
volume's geometry (spacing, direction, per-slice ImagePositionPatient), so a label drawn
on the NIfTI grid fits the DICOM series and MONAI Label's conversion back to NIfTI gives
the same grid. UIDs are derived from the image id, so converting again gives the same
series (Orthanc stores it once).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True, kw_only=True)
class SeriesIds:
    """The DICOM identity of one converted image: its own patient, study and series."""

    image_id: str
    patient_id: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str

    @classmethod
    def for_image(cls, image_id: str, *, namespace: str = "emlabel") -> SeriesIds:
        """Deterministic UIDs for ``image_id`` (same id, same UIDs)."""

        def uid(kind: str) -> str:
            return generate_uid(entropy_srcs=[namespace, image_id, kind])

        return cls(
            image_id=image_id,
            patient_id=image_id[:64],
            study_uid=uid("study"),
            series_uid=uid("series"),
            frame_of_reference_uid=uid("frame"),
        )

    def instance_uid(self, index: int) -> str:
        """SOPInstanceUID of slice ``index``."""
        return generate_uid(entropy_srcs=[self.series_uid, "instance", str(index)])


def _as_int16(image: sitk.Image) -> sitk.Image:
    """CT pixel data: signed 16 bit (HU), rounded and clipped when the input is not."""
    if image.GetPixelID() == sitk.sitkInt16:
        return image
    array = sitk.GetArrayFromImage(image)
    info = np.iinfo(np.int16)
    out = sitk.GetImageFromArray(np.clip(np.rint(array), info.min, info.max).astype(np.int16))
    out.CopyInformation(image)
    return out


def write_dicom_series(
    image_path: str | Path,
    out_dir: str | Path,
    ids: SeriesIds,
    *,
    modality: str = "CT",
    description: str = "EMLabel demo",
) -> list[Path]:
    """Write ``image_path`` (NIfTI, NRRD, ...) as one DICOM file per slice; returns the files."""
    image = sitk.ReadImage(str(image_path))
    if image.GetDimension() != 3:
        raise ValueError(
            f"{image_path}: a DICOM series needs a 3D image, got {image.GetDimension()}D"
        )
    image = _as_int16(image)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    now_date, now_time = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    common = {
        "0008|0016": CT_IMAGE_STORAGE,
        "0008|0008": "DERIVED\\SECONDARY\\AXIAL",
        "0008|0020": now_date,
        "0008|0030": now_time,
        "0008|0021": now_date,
        "0008|0031": now_time,
        "0008|0050": ids.image_id[:16],
        "0008|0060": modality,
        "0008|103e": f"{description} {ids.image_id}"[:64],
        "0010|0010": ids.image_id[:64],
        "0010|0020": ids.patient_id,
        "0020|000d": ids.study_uid,
        "0020|000e": ids.series_uid,
        "0020|0010": "1",
        "0020|0011": "1",
        "0020|0052": ids.frame_of_reference_uid,
        "0020|0037": orientation,
        "0018|0050": f"{image.GetSpacing()[2]:.6f}",
        "0028|1052": "0",
        "0028|1053": "1",
        "0028|1054": "HU",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # use the UIDs set below, not fresh ones
    files = []
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in common.items():
            slice_.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        slice_.SetMetaData("0020|0013", str(k + 1))
        slice_.SetMetaData("0008|0018", ids.instance_uid(k))
        path = out / f"slice_{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(slice_)
        files.append(path)
    return files
