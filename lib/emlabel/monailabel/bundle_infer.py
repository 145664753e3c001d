"""Serving MONAI bundles (``--conf bundles DIR1,DIR2``) as infer tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai import transforms as mt
from monailabel.tasks.infer.bundle import BundleInferTask

from emlabel.monailabel.tasks import run_chain_hiding_image_path


class BundleInfer(BundleInferTask):
    """MONAI Label's BundleInferTask, fixed for bundles that invert their own preprocessing.

    EMLabel bundles end with MONAI's Invertd, so MONAI Label's extra ``Restored`` resize is
    turned off (it would resize to the resampled shape); the channel axis is squeezed for
    MONAI Label's writer, and the MONAI 1.6 ``image_path`` clash is avoided.
    """

    def __init__(self, path: str, conf: dict[str, str]) -> None:
        super().__init__(path, conf, add_post_restore=False, load_strict=True)

    def run_pre_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> Any:
        return run_chain_hiding_image_path(data, mt.Compose(list(transforms)))

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return [*super().post_transforms(data), mt.SqueezeDimd(keys="pred", dim=0)]
