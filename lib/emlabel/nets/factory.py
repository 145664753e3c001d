"""Segmentation network factories built on MONAI's networks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet


def build_unet(
    *,
    spatial_dims: int,
    out_channels: int,
    channels: Sequence[int],
    num_res_units: int = 1,
    in_channels: int = 1,
    dropout: float = 0.0,
) -> UNet:
    """A MONAI UNet halving the resolution between consecutive ``channels`` levels."""
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=num_res_units,
        dropout=dropout,
    )


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
