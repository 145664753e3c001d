"""Image channels as the network reads them: grey, RGB stored grey, or true colour.

PNG / JPEG / TIFF files are often grey images stored as RGB(A) (Shenzhen's X-rays). An app
with ``in_channels = 1`` reads the mean of the colour channels (exactly the grey value when
the channels are equal; alpha dropped); ``in_channels = 3`` reads R, G, B (a grey file is
repeated). A label read with a channel axis keeps its first channel.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.transforms import MapTransform


def planned_channels(image: Any, in_channels: int) -> Any:
    """Channel-first ``image`` [C, ...] with ``in_channels`` channels (see module)."""
    channels = int(image.shape[0])
    if channels == in_channels:
        return image
    if in_channels == 1:
        return image[: min(channels, 3)].mean(dim=0, keepdim=True)
    if channels == 1:
        return image.repeat(in_channels, *([1] * (image.ndim - 1)))
    return image[:in_channels]


class PlannedChannelsd(MapTransform):
    """``image`` to the app's ``in_channels``; every other key (labels) to its first channel."""

    def __init__(self, keys: Any, *, in_channels: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.in_channels = in_channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if key == "image":
                d[key] = planned_channels(
                    torch.as_tensor(value) if not isinstance(value, torch.Tensor) else value,
                    self.in_channels,
                )
            elif value.shape[0] > 1:
                d[key] = value[:1]
        return d
