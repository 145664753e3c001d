"""``configs/metadata.json`` of an exported bundle (MONAI bundle specification)."""

from __future__ import annotations

from importlib import metadata as importlib_metadata
from typing import Any

import numpy
import torch

import emlabel
from emlabel.bundle.schema import SCHEMA_URL
from emlabel.settings import AppSettings


def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def build_metadata(
    *,
    settings: AppSettings,
    method: str,
    version: str,
    description: str,
    provenance: dict[str, Any],
    eval_metrics: dict[str, float],
) -> dict[str, Any]:
    """Every mandatory key of the 2024-07-25 schema, plus EMLabel's provenance."""
    channel_def = {"0": "background"} | {str(i + 1): name for i, name in enumerate(settings.labels)}
    spatial = list(settings.roi_size)
    return {
        "schema": SCHEMA_URL,
        "version": version,
        "changelog": {version: f"exported by EMLabel {emlabel.__version__}"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"nibabel": _version("nibabel")},
        "task": f"Segmentation of {', '.join(settings.labels)}",
        "description": description,
        "authors": "EMLabel users (model trained with EMLabel)",
        "copyright": "Copyright (c) the EMLabel users who trained this model",
        "data_source": "the studies folder of the EMLabel server that trained this model",
        "data_type": "nibabel",
        "image_classes": f"{settings.in_channels}-channel {settings.modality} image "
        f"({settings.spatial_dims}D), normalisation '{settings.normalisation}'",
        "label_classes": "; ".join(f"{k}: {v}" for k, v in channel_def.items()),
        "pred_classes": "; ".join(f"{k}: {v}" for k, v in channel_def.items()),
        "eval_metrics": eval_metrics,
        "intended_use": "Research annotation assistance; not for clinical use",
        "references": [],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield" if settings.modality == "CT" else "magnitude",
                    "modality": settings.modality,
                    "num_channels": settings.in_channels,
                    "spatial_shape": spatial,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": settings.num_classes,
                    "spatial_shape": spatial,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": channel_def,
                }
            },
        },
        "emlabel": {"method": method, "emlabel_version": emlabel.__version__, **provenance},
    }
