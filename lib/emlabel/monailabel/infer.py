"""Infer task ``segmentation``: the 3D UNet over sliding windows, on CPU."""

from __future__ import annotations

from emlabel.monailabel.tasks import VolumeInferTask
from emlabel.nets.app import segmentation_unet
from emlabel.settings import AppSettings


class SegmentationInfer(VolumeInferTask):
    """Multi-structure segmentation; the output is restored to the input image's grid."""

    def __init__(self, *, model_path: str, settings: AppSettings, description: str) -> None:
        super().__init__(
            model_path=model_path,
            network=segmentation_unet(settings),
            settings=settings,
            description=description,
        )
