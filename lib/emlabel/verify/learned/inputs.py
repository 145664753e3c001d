"""The learned verifier's view of one structure: a crop around it, resized to a fixed grid.

A label error is a disagreement between a mask and the image (or the model), so the network
looks where the structure is: the box around every mask it compares (the label, the other
candidate of a pair, the model's map thresholded at 0.5), widened by ``margin`` of its size on
each side (at least :data:`MIN_MARGIN_VOXELS`), then resampled to ``grid``: area averaging
when the crop is larger than the grid on every axis (masks become fractional occupancies, so
thin errors and small islands leave a trace), else linear. A structure with no
voxel anywhere is judged on the whole image. Channels, in order:

- the image's channels;
- one channel per mask (1 for a single label, 2 for a pair: A then B);
- the model's probability of the structure (zeros without a model);
- ``has_model``: a constant 1 when the model's map is given, 0 otherwise, so one network
  learns both with and without a segmentation model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MIN_MARGIN_VOXELS = 4
DEFAULT_MARGIN = 0.25
DEFAULT_GRID_2D = (64, 64)
DEFAULT_GRID_3D = (32, 32, 32)


def default_grid(spatial_dims: int) -> tuple[int, ...]:
    """64 x 64 pixels in 2D, 32^3 voxels in 3D."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return DEFAULT_GRID_2D if spatial_dims == 2 else DEFAULT_GRID_3D


def in_channels(image_channels: int, n_masks: int) -> int:
    """Image channels + masks + model map + has_model."""
    return image_channels + n_masks + 2


def crop_box(
    masks: Sequence[np.ndarray], shape: Sequence[int], *, margin: float = DEFAULT_MARGIN
) -> tuple[slice, ...]:
    """The slices of the widened box around every voxel of ``masks`` (whole image if none)."""
    union = np.zeros(tuple(shape), dtype=bool)
    for mask in masks:
        union |= mask
    if not union.any():
        return tuple(slice(0, s) for s in shape)
    box = []
    for axis, size in enumerate(shape):
        others = tuple(a for a in range(len(shape)) if a != axis)
        hits = np.flatnonzero(union.any(axis=others))
        lo, hi = int(hits[0]), int(hits[-1]) + 1
        pad = max(MIN_MARGIN_VOXELS, round(margin * (hi - lo)))
        box.append(slice(max(0, lo - pad), min(size, hi + pad)))
    return tuple(box)


def network_input(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    model_map: np.ndarray | None,
    *,
    grid: Sequence[int],
    margin: float = DEFAULT_MARGIN,
) -> np.ndarray:
    """``(channels, *grid)`` float32: the crop of image, masks and model map (module docstring).

    ``image``: ``(C, *spatial)``; ``masks``: boolean ``spatial`` arrays; ``model_map``:
    ``spatial`` probabilities in [0, 1] or None.
    """
    spatial = image.shape[1:]
    if len(grid) != len(spatial):
        raise ValueError(f"grid {tuple(grid)} does not fit a {len(spatial)}-D image")
    boxes = [np.asarray(m, dtype=bool) for m in masks]
    if model_map is not None:
        boxes.append(np.asarray(model_map) >= 0.5)
    box = crop_box(boxes, spatial, margin=margin)
    cropped = tuple(b.stop - b.start for b in box)
    model = np.zeros(cropped, np.float32) if model_map is None else np.asarray(model_map)[box]
    stack = np.concatenate(
        [
            np.asarray(image[(slice(None), *box)], dtype=np.float32),
            np.stack([np.asarray(m[box], dtype=np.float32) for m in masks]),
            np.asarray(model, dtype=np.float32)[None],
        ]
    )
    shrink = all(c >= g for c, g in zip(cropped, grid, strict=True))
    mode = "area" if shrink else ("bilinear" if len(spatial) == 2 else "trilinear")
    corners = None if mode == "area" else False
    resized = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(stack))[None], size=tuple(grid), mode=mode,
        align_corners=corners,
    )[0]  # fmt: skip
    has_model = torch.full((1, *grid), 0.0 if model_map is None else 1.0)
    return torch.cat([resized, has_model]).numpy()
