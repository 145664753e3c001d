"""Label maps <-> DICOM-SEG segments, by structure name.

Why: dcmqi numbers a SEG's segments 1..K in the order of the label values present, so a
label holding only liver (1) and kidney (3) comes back from the SEG as values 1 and 2.
Writing names each segment after its structure; reading maps segments back to label
values through those names, so a round trip keeps every value. Reading also resamples the
SEG onto the image grid (nearest neighbour): a SEG from a viewer may hold only the frames
that were painted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from emlabel.errors import InvalidLabelError

SERIES_DESCRIPTION = "EMLabel final label"

REVIEW_CREATOR = "EMLabel (machine label for review)"
"""ContentCreatorName of the SEGs EMLabel puts on the server for a review: they hold
machine output, so EMLabel never takes them in as human labels. A viewer that saves an
edited copy writes a new SEG with its own creator, which is taken in as the review."""


def review_description(tag: str) -> str:
    """SeriesDescription of the SEG of the label version ``tag`` sent to review."""
    return f"EMLabel {tag} for review"


def segment_infos(
    values: Sequence[int], labels: Sequence[str], *, description: str = SERIES_DESCRIPTION
) -> list[dict[str, Any]]:
    """``label_info`` for MONAI Label's ``nifti_to_dicom_seg``: one entry per present value.

    ``labels[v - 1]`` names value ``v`` (0 is background and has no segment); ``description``
    becomes the SEG's SeriesDescription.
    """
    infos = []
    for value in values:
        if not 1 <= value <= len(labels):
            raise InvalidLabelError(f"label value {value} has no structure name")
        name = labels[value - 1]
        infos.append(
            {
                "name": name,
                "description": f"{name} (EMLabel label value {value})",
                "model_name": description,
            }
        )
    return infos


def stamp_creation_time(seg_file: str | Path, *, creator: str | None = None) -> None:
    """Give a SEG's series and content times microseconds (dcmqi writes whole seconds), and
    (``creator``) its ContentCreatorName.

    Two finals saved within one second must still sort in the order they were saved when
    a cache is rebuilt from the server.
    """
    import datetime

    import pydicom

    now = datetime.datetime.now()
    dataset = pydicom.dcmread(str(seg_file))
    for prefix in ("Series", "Content", "InstanceCreation"):
        setattr(dataset, f"{prefix}Date", now.strftime("%Y%m%d"))
        setattr(dataset, f"{prefix}Time", now.strftime("%H%M%S.%f"))
    if creator is not None:
        dataset.ContentCreatorName = creator
    dataset.save_as(str(seg_file))


def present_values(label_path: str | Path) -> list[int]:
    """The non-zero label values in a label file, ascending."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    return [int(v) for v in np.unique(array) if v != 0]


MIN_ON_GRID = 0.5
"""Share of a SEG's labeled volume (mm^3) that must fall inside its image after resampling."""


def _labeled_volume(image: sitk.Image) -> float:
    """Labeled volume in mm^3: non-zero voxels times the voxel volume."""
    count = int(np.count_nonzero(sitk.GetArrayViewFromImage(image)))
    return count * float(np.prod(image.GetSpacing()))


def seg_to_label(
    seg_file: str | Path,
    reference_image: str | Path,
    out_path: str | Path,
    *,
    label_map: Mapping[str, int],
) -> Path:
    """Write the label map of a DICOM-SEG file on the grid of ``reference_image``.

    Segments are matched to label values by their SegmentLabel (case-insensitive). Refused
    (:class:`InvalidLabelError`): a SEG with a segment EMLabel does not know, with
    overlapping segments, with no labeled voxel, or whose labeled volume does not lie on the
    image's grid (less than :data:`MIN_ON_GRID` of it after resampling: a SEG of another
    image, or in another frame of reference). A SEG holding only some frames (OHIF stores the
    painted ones) lies on the grid and is resampled onto the whole image.
    """
    import pydicom
    import pydicom_seg

    try:
        dataset = pydicom.dcmread(str(seg_file))
        result = pydicom_seg.MultiClassReader().read(dataset)
    except Exception as e:  # any reader failure: not a SEG EMLabel can use
        raise InvalidLabelError(f"DICOM-SEG {Path(seg_file).name} is unreadable: {e}") from e
    by_name = {name.lower(): value for name, value in label_map.items()}
    mapping: dict[int, int] = {}
    for number, info in result.segment_infos.items():
        name = str(getattr(info, "SegmentLabel", "")).lower()
        if name not in by_name:
            raise InvalidLabelError(
                f"DICOM-SEG segment {number} is named {name!r}, which is not one of the app's "
                f"labels ({', '.join(label_map)})"
            )
        mapping[int(number)] = by_name[name]
    segments = sitk.GetArrayFromImage(result.image)
    values = np.zeros(segments.shape, np.uint8)
    for number, value in mapping.items():
        values[segments == number] = value
    if not values.any():
        raise InvalidLabelError(f"DICOM-SEG {Path(seg_file).name} holds no labeled voxel")
    seg_image = sitk.GetImageFromArray(values)
    seg_image.CopyInformation(result.image)
    reference = sitk.ReadImage(str(reference_image))
    on_grid = sitk.Resample(
        seg_image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    share = _labeled_volume(on_grid) / _labeled_volume(seg_image)
    if share < MIN_ON_GRID:
        raise InvalidLabelError(
            f"DICOM-SEG {Path(seg_file).name} does not lie on its image's grid: "
            f"{share:.0%} of its labeled volume is inside the image (another image's SEG, or "
            "another frame of reference?)"
        )
    out = Path(out_path)
    sitk.WriteImage(on_grid, str(out), True)
    return out
