"""Infer task ``segmentation``: the 3D UNet over sliding windows, on CPU."""

from __future__ import annotations

from emlabel.monailabel.tasks import VolumeInferTask
from emlabel.nets import build_unet
from emlabel.settings import AppSettings


def segmentation_unet(settings: AppSettings):
    """The UNet of the ``segmentation`` model (and of each AIDE network)."""
    return build_unet(
        spatial_dims=3,
        out_channels=settings.num_classes,
        channels=settings.network_channels,
        num_res_units=settings.num_res_units,
    )


class SegmentationInfer(VolumeInferTask):
    """Multi-structure segmentation; the output is restored to the input image's grid."""

    def __init__(self, *, model_path: str, settings: AppSettings, description: str) -> None:
        super().__init__(
            model_path=model_path,
            network=segmentation_unet(settings),
            settings=settings,
            description=description,
        )
