"""Infer task ``segmentation``: the 3D UNet over sliding windows, on CPU."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai import transforms as mt
from monai.inferers import Inferer, SlidingWindowInferer
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from emlabel.nets import build_unet
from emlabel.settings import AppSettings
from emlabel.transforms import inference_postprocessing, load_and_normalise

PRE_TRANSFORMS_KEY = "emlabel_pre_transforms"


def run_chain_hiding_image_path(data: dict[str, Any], compose: mt.Compose) -> dict[str, Any]:
    """Run ``compose`` on ``data`` without the ``image_path`` string MONAI Label adds.

    MONAI 1.6's Spacingd calls ``.update()`` on every ``image_*`` key, which fails on that
    string; it is hidden while the chain runs and put back for MONAI Label's writer.
    """
    image_path = data.pop("image_path", None)
    data = compose(data)
    if image_path is not None:
        data["image_path"] = image_path
    return data


class SegmentationInfer(BasicInferTask):
    """Multi-structure segmentation; the output is restored to the input image's grid."""

    def __init__(self, *, model_path: str, settings: AppSettings, description: str) -> None:
        self._settings = settings
        super().__init__(
            path=model_path,
            network=build_unet(
                spatial_dims=3,
                out_channels=settings.num_classes,
                channels=settings.network_channels,
                num_res_units=settings.num_res_units,
            ),
            type=InferType.SEGMENTATION,
            labels=list(settings.labels),
            dimension=3,
            description=description,
            roi_size=settings.roi_size,
            config={"device": "cpu", "result_dtype": "uint8"},
        )

    def is_trained(self) -> bool:
        """True once a trained model file exists; the app refuses infer (409) before that."""
        return self.get_path(validate=True) is not None

    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        return load_and_normalise(self._settings, ("image",))

    def run_pre_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> Any:
        # Run as one Compose and keep it: Invertd in the post-transforms undoes exactly these
        # (the same MONAI inversion an exported bundle uses, so both give the same labels).
        compose = mt.Compose(list(transforms))
        data = run_chain_hiding_image_path(data, compose)
        data[PRE_TRANSFORMS_KEY] = compose
        return data

    def inferer(self, data: Any = None) -> Inferer:
        return SlidingWindowInferer(
            roi_size=self._settings.roi_size, sw_batch_size=1, overlap=self._settings.sw_overlap
        )

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return [
            mt.EnsureTyped(keys="pred", device="cpu"),
            *inference_postprocessing(data[PRE_TRANSFORMS_KEY]),
            mt.SqueezeDimd(keys="pred", dim=0),
        ]  # pred stays a MetaTensor: MONAI Label's writer takes the affine from it
