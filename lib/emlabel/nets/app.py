"""The app's networks, sized by its settings (one place for every learner and infer task)."""

from __future__ import annotations

import torch

from emlabel.nets.cgs import CGSNet, build_cgs_net, build_plain_unet
from emlabel.nets.factory import build_unet
from emlabel.settings import AppSettings


def segmentation_unet(settings: AppSettings) -> torch.nn.Module:
    """The UNet of the ``segmentation`` model (and of each AIDE network)."""
    return build_unet(
        spatial_dims=settings.spatial_dims,
        in_channels=settings.in_channels,
        out_channels=settings.num_classes,
        channels=settings.network_channels,
        num_res_units=settings.num_res_units,
    )


def _cgs_size(settings: AppSettings) -> dict:
    return {
        "spatial_dims": settings.spatial_dims,
        "in_channels": settings.in_channels,
        "num_classes": settings.num_classes,
        "channels": settings.cgs_channels,
        "feature_channels": settings.cgs_feature_channels,
    }


def cgs_network(settings: AppSettings) -> CGSNet:
    """The CGS U-Net with its generalist and specialist heads."""
    return build_cgs_net(**_cgs_size(settings))


def cgs_serving_network(settings: AppSettings) -> torch.nn.Module:
    """The generalist-only U-Net infer ``cgs`` serves (a plain MONAI BasicUNet)."""
    return build_plain_unet(**_cgs_size(settings))
