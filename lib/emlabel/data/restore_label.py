"""A label map on the network's grid back onto its image's grid, nearest neighbour, lean.

MONAI's ``Invertd`` (nearest) resamples through ``grid_sample``: a sampling grid of
``3 x`` the image's voxels in float32 plus ``affine_grid``'s intermediates, about 12 bytes
per output voxel (a 458x379x336 CT: 700 MB) for a one-channel label map. When the two grids
differ by an axis permutation, flips, scaling and a shift only (which is what ``Orientation``
and ``Spacing`` do), nearest-neighbour resampling is separable: with ``M = inv(A_net) @
A_image`` (image voxel -> network voxel), output axis ``p`` reads network axis ``k`` (the one
nonzero ``M[k, p]``) at index ``round(M[k, p] * j + M[k, -1])`` for image index ``j``, and
zero outside the network grid, exactly as ``grid_sample`` with zero padding does. Written
here because neither MONAI nor torch offers it; any other geometry falls back to ``Invertd``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd

AXIS_TOLERANCE = 1e-6
"""Largest off-axis entry of ``M`` (relative to its row) for the separable path."""


def separable_axes(matrix: np.ndarray) -> list[int] | None:
    """For each image axis ``p``, the network axis ``k`` with ``M[k, p] != 0``; None when
    ``M``'s linear part is not a scaled permutation."""
    linear = matrix[:-1, :-1]
    rank = linear.shape[0]
    axes = []
    for p in range(rank):
        column = np.abs(linear[:, p])
        k = int(np.argmax(column))
        if column[k] == 0 or np.any(np.delete(column, k) > AXIS_TOLERANCE * column[k]):
            return None
        axes.append(k)
    return axes if sorted(axes) == list(range(rank)) else None


def restore_label(
    label: torch.Tensor,
    *,
    label_affine: np.ndarray,
    image_affine: np.ndarray,
    image_shape: tuple[int, ...],
) -> torch.Tensor | None:
    """``label`` [C, *net] (network grid, ``label_affine``) on the image grid [C, *image_shape];
    None when the geometry is not separable (see module)."""
    rank = len(image_shape)
    net = to_affine_nd(rank, np.asarray(label_affine, dtype=np.float64))
    img = to_affine_nd(rank, np.asarray(image_affine, dtype=np.float64))
    matrix = np.linalg.solve(net, img)  # image voxel -> network voxel
    axes = separable_axes(matrix)
    if axes is None:
        return None
    source = label.permute(0, *[k + 1 for k in axes])  # axis p of source = network axis axes[p]
    indices, valid = [], []
    for p, k in enumerate(axes):
        j = np.arange(image_shape[p], dtype=np.float64)
        index = np.rint(matrix[k, p] * j + matrix[k, -1]).astype(np.int64)
        inside = (index >= 0) & (index < source.shape[p + 1])
        indices.append(torch.as_tensor(np.clip(index, 0, source.shape[p + 1] - 1)))
        valid.append(torch.as_tensor(inside))
    out = source
    for p, index in enumerate(indices):
        out = torch.index_select(out, p + 1, index)
    mask = valid[0]
    for p in range(1, rank):
        mask = mask.unsqueeze(-1) & valid[p].reshape((1,) * p + (-1,))
    return out * mask.unsqueeze(0).to(out.dtype)


class RestoreLabeld(mt.MapTransform):
    """``keys`` (label maps on the network grid) onto the grid of ``orig_key``'s original
    image (the size and affine its first invertible transform recorded); ``Invertd`` when
    not separable."""

    def __init__(self, keys: Any, *, transform: mt.Compose, orig_key: str = "image") -> None:
        super().__init__(keys)
        self.orig_key = orig_key
        self.fallback = mt.Invertd(
            keys=keys, transform=transform, orig_keys=orig_key, nearest_interp=True, to_tensor=True
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.orig_key]
        operations = image.applied_operations if isinstance(image, MetaTensor) else []
        # the grid as loaded: size and affine before the first invertible transform
        first = operations[0] if operations else {}
        info = first.get("extra_info", {})
        loaded_affine = info.get("original_affine", info.get("src_affine"))
        if loaded_affine is None:
            return self.fallback(d)
        shape = tuple(int(s) for s in first["orig_size"])
        for key in self.key_iterator(d):
            label = d[key]
            restored = restore_label(
                label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label),
                label_affine=np.asarray(image.affine),
                image_affine=np.asarray(loaded_affine),
                image_shape=shape,
            )
            if restored is None:
                return self.fallback(d)
            d[key] = MetaTensor(restored, affine=torch.as_tensor(np.asarray(loaded_affine)))
        return d
