"""CGS network: one shared U-Net trunk, a generalist head and K specialist heads.

The trunk is MONAI's :class:`~monai.networks.nets.BasicUNet` (2D or 3D by
``spatial_dims``) configured like the CGS authors' U-Net: five levels (two 3x3 convs
each, max-pool down, transposed-conv up with skip concatenation), BatchNorm +
LeakyReLU, ``channels`` = the five encoder widths (authors: 16/32/64/128/256). It was
chosen over :class:`~monai.networks.nets.UNet` because its last decoder block
(``upcat_1``: conv-BN-LeakyReLU x2) already ends in a normalised, activated feature map
of a width we choose (``features[5]`` = ``feature_channels``), and its only layer after
that is ``final_conv`` (a 1x1 conv). Replacing ``final_conv`` with ``Identity`` exposes
that feature map cleanly; the generalist head is the same 1x1 conv kept outside. So
trunk + generalist head *is* a plain ``BasicUNet`` with ``out_channels = K + 1``, which
is what :meth:`CGSNet.generalist_only` returns for serving.

Note: BasicUNet applies ``dropout`` in every conv block (the authors' U-Net only in the
encoder), and always downsamples four times (inputs of 16 px/voxels a side or more).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Act, Conv, Norm
from monai.networks.nets import BasicUNet
from torch import nn

DEFAULT_CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 256)
"""The authors' U-Net encoder widths."""

SPECIALIST_CLASSES = 3
"""Classes a specialist predicts: 0 background, 1 its own class, 2 any other target."""

_ACT = ("LeakyReLU", {"negative_slope": 0.01, "inplace": True})
_NORM = ("batch", {})


def _trunk(
    *,
    spatial_dims: int,
    in_channels: int,
    channels: Sequence[int],
    feature_channels: int,
    dropout: float,
    out_channels: int,
) -> BasicUNet:
    if len(channels) != 5 or min(channels) < 1:
        raise ValueError(f"channels must be five positive encoder widths, got {tuple(channels)}")
    if feature_channels < 1:
        raise ValueError(f"feature_channels must be positive, got {feature_channels}")
    return BasicUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=(*channels, feature_channels),
        act=_ACT,
        norm=_NORM,
        dropout=dropout,
    )


class SpecialistHead(nn.Sequential):
    """1x1 conv F->F, BatchNorm, LeakyReLU, 3x3 conv F->3 (background / own / other)."""

    def __init__(self, spatial_dims: int, feature_channels: int) -> None:
        conv = Conv[Conv.CONV, spatial_dims]
        super().__init__(
            conv(feature_channels, feature_channels, kernel_size=1),
            Norm[Norm.BATCH, spatial_dims](feature_channels),
            Act[Act.LEAKYRELU](negative_slope=0.01, inplace=True),
            conv(feature_channels, SPECIALIST_CLASSES, kernel_size=3, padding=1),
        )


class CGSNet(nn.Module):
    """Shared trunk + generalist head (``num_classes`` = K + 1) + K specialist heads.

    ``forward`` returns only the generalist logits, so the network drops in wherever a
    segmentation network is expected; ``forward_all`` also returns the specialists'.
    """

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        feature_channels: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if num_classes < 2:
            raise ValueError(f"num_classes (background + targets) must be >= 2, got {num_classes}")
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.num_targets = num_classes - 1
        self.trunk = _trunk(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            channels=channels,
            feature_channels=feature_channels,
            dropout=dropout,
            out_channels=num_classes,
        )
        # The trunk's own 1x1 output conv becomes the generalist head; the trunk then
        # returns the last decoder feature (already BN + LeakyReLU).
        self.generalist_head = self.trunk.final_conv
        self.trunk.final_conv = nn.Identity()
        self.specialists = nn.ModuleList(
            SpecialistHead(spatial_dims, feature_channels) for _ in range(self.num_targets)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The shared last decoder feature map ``[N, feature_channels, *spatial]``."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Generalist logits ``[N, K + 1, *spatial]``."""
        return self.generalist_head(self.features(x))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Generalist logits and the K specialist logits (each ``[N, 3, *spatial]``)."""
        feature = self.features(x)
        return self.generalist_head(feature), [head(feature) for head in self.specialists]

    def generalist_parameters(self) -> list[nn.Parameter]:
        """Parameters of the trunk and the generalist head (no specialists)."""
        return [*self.trunk.parameters(), *self.generalist_head.parameters()]

    def generalist_only(self) -> BasicUNet:
        """A plain MONAI ``BasicUNet`` (trunk + generalist head) for serving.

        An independent copy of the current weights (training this net afterwards does
        not change it), in the same train/eval mode; its output equals ``forward``.
        """
        net = copy.deepcopy(self.trunk)
        net.final_conv = copy.deepcopy(self.generalist_head)
        return net


def build_cgs_net(
    *,
    spatial_dims: int,
    in_channels: int = 1,
    num_classes: int,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    feature_channels: int = 16,
    dropout: float = 0.0,
) -> CGSNet:
    """A :class:`CGSNet` with ``num_classes - 1`` specialists (see the module docstring)."""
    return CGSNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        num_classes=num_classes,
        channels=channels,
        feature_channels=feature_channels,
        dropout=dropout,
    )


def build_plain_unet(
    *,
    spatial_dims: int,
    in_channels: int = 1,
    num_classes: int,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    feature_channels: int = 16,
    dropout: float = 0.0,
) -> BasicUNet:
    """The same U-Net without specialists (what ``generalist_only`` is equivalent to)."""
    return _trunk(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        channels=channels,
        feature_channels=feature_channels,
        dropout=dropout,
        out_channels=num_classes,
    )
