"""Weak and strong views for the mean-teacher frame (2D and 3D, batched tensors).

* Weak view (teacher input, and the labeled images): random flips, rot90 in a random
  plane whose two sides are equal, and a small rotation in a random plane.
* Strong view (student input): intensity jitter of the weak view, then CutMix between
  unlabeled images. One :class:`CutMix` (one box per sample and a mixing partner) is
  applied to the image *and* to every pseudo-label and mask, so all of them are mixed
  with exactly the same box (the authors' public code indexed the mask with a typo).

Images are ``[N, C, *spatial]``; labels and masks ``[N, *spatial]`` or ``[N, K, *spatial]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator: torch.Generator, high: int) -> int:
    """An integer in [0, high)."""
    return int(torch.randint(high, (), generator=generator).item())


def _rotation_theta(
    spatial_shape: Sequence[int], axes: tuple[int, int], angle: float
) -> torch.Tensor:
    """``affine_grid`` matrix ``[D, D + 1]`` rotating by ``angle`` (radians) in the plane of
    spatial ``axes``, isotropic in pixel units."""
    dims = len(spatial_shape)
    # affine_grid coordinates run x = last spatial axis first.
    half = torch.tensor([spatial_shape[dims - 1 - i] / 2.0 for i in range(dims)])
    rotation = torch.eye(dims)
    a, b = (dims - 1 - axes[0], dims - 1 - axes[1])
    c, s = math.cos(angle), math.sin(angle)
    rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = c, -s, s, c
    theta = torch.diag(1.0 / half) @ rotation @ torch.diag(half)
    return torch.cat([theta, torch.zeros(dims, 1)], dim=1)


def _rotate(
    image: torch.Tensor, label: torch.Tensor | None, axes: tuple[int, int], angle: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate one sample (``image`` ``[C, *spatial]``, ``label`` ``[*spatial]``)."""
    spatial = image.shape[1:]
    theta = _rotation_theta(spatial, axes, angle).to(image.dtype).unsqueeze(0)
    grid = F.affine_grid(theta, [1, image.shape[0], *spatial], align_corners=False)
    out = F.grid_sample(
        image.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    if label is None:
        return out, None
    lab = F.grid_sample(
        label[None, None].to(image.dtype),
        grid,
        mode="nearest",
        padding_mode="border",
        align_corners=False,
    )[0, 0]
    return out, lab.round().to(label.dtype)


def weak_view(
    image: torch.Tensor,
    label: torch.Tensor | None = None,
    *,
    generator: torch.Generator,
    rotation_degrees: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample random flips, rot90 and small rotation of ``image`` (and ``label``)."""
    dims = image.ndim - 2
    planes = [(a, b) for a in range(dims) for b in range(a + 1, dims)]
    images, labels = [], []
    for i in range(image.shape[0]):
        x = image[i]
        y = None if label is None else label[i]
        for axis in range(dims):
            if _randint(generator, 2):
                x = x.flip(axis + 1)
                y = None if y is None else y.flip(axis)
        square = [p for p in planes if x.shape[p[0] + 1] == x.shape[p[1] + 1]]
        if square:
            a, b = square[_randint(generator, len(square))]
            k = _randint(generator, 4)
            x = torch.rot90(x, k, (a + 1, b + 1))
            y = None if y is None else torch.rot90(y, k, (a, b))
        if rotation_degrees > 0 and planes:
            plane = planes[_randint(generator, len(planes))]
            angle = math.radians(_uniform(generator, -rotation_degrees, rotation_degrees))
            x, y = _rotate(x, y, plane, angle)
        images.append(x)
        labels.append(y)
    out_label = None if label is None else torch.stack(labels)  # type: ignore[arg-type]
    return torch.stack(images), out_label


def intensity_jitter(
    image: torch.Tensor, *, generator: torch.Generator, strength: float = 0.2
) -> torch.Tensor:
    """Per-sample contrast (about the mean), brightness and Gaussian noise, scaled by the
    sample's standard deviation so the jitter does not depend on the intensity range."""
    if strength <= 0:
        return image
    reduce = tuple(range(1, image.ndim))
    shape = (image.shape[0],) + (1,) * (image.ndim - 1)
    mean = image.mean(dim=reduce, keepdim=True)
    std = image.std(dim=reduce, keepdim=True).clamp_min(1e-6)
    contrast = 1 + strength * (2 * torch.rand(shape, generator=generator) - 1)
    brightness = strength * (2 * torch.rand(shape, generator=generator) - 1) * std
    noise = torch.randn(image.shape, generator=generator) * (0.25 * strength) * std
    return ((image - mean) * contrast.to(image) + mean + brightness + noise.to(image)).to(
        image.dtype
    )


@dataclasses.dataclass(frozen=True)
class CutMix:
    """One CutMix draw: sample i takes the pixels of sample ``source[i]`` inside ``boxes[i]``."""

    boxes: torch.Tensor
    """Bool ``[N, *spatial]``: each sample's box."""
    source: torch.Tensor
    """Long ``[N]``: the sample each sample's box is copied from (never itself when N > 1)."""

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mix ``tensor`` ``[N, *extra, *spatial]`` (image, label, mask or decisions)."""
        n, spatial = self.boxes.shape[0], self.boxes.shape[1:]
        if tensor.shape[0] != n or tensor.shape[tensor.ndim - len(spatial) :] != spatial:
            raise ValueError(
                f"cannot CutMix a tensor of shape {tuple(tensor.shape)} with boxes "
                f"{tuple(self.boxes.shape)}"
            )
        extra = tensor.ndim - self.boxes.ndim
        box = self.boxes.reshape(n, *(1,) * extra, *spatial).to(tensor.device)
        return torch.where(box, tensor[self.source.to(tensor.device)], tensor)


def random_box(
    spatial_shape: Sequence[int], area_range: tuple[float, float], *, generator: torch.Generator
) -> torch.Tensor:
    """Bool mask of one axis-aligned box covering a fraction U(``area_range``) of the image
    (random aspect ratio up to 1:3 per axis pair, placed inside the image)."""
    dims = len(spatial_shape)
    total = math.prod(spatial_shape)
    volume = _uniform(generator, *area_range) * total
    log_ratios = [_uniform(generator, -0.5, 0.5) * math.log(3.0) for _ in range(dims)]
    centre = sum(log_ratios) / dims
    side = volume ** (1.0 / dims)
    sides = [
        min(max(round(side * math.exp(r - centre)), 1), size)
        for r, size in zip(log_ratios, spatial_shape, strict=True)
    ]
    box = torch.zeros(tuple(spatial_shape), dtype=torch.bool)
    index = tuple(
        slice(start, start + length)
        for length, size in zip(sides, spatial_shape, strict=True)
        for start in (_randint(generator, size - length + 1),)
    )
    box[index] = True
    return box


def random_cutmix(
    batch_size: int,
    spatial_shape: Sequence[int],
    area_range: tuple[float, float],
    *,
    generator: torch.Generator,
) -> CutMix:
    """A box per sample and a mixing partner other than itself (a random cyclic shift)."""
    boxes = torch.stack(
        [random_box(spatial_shape, area_range, generator=generator) for _ in range(batch_size)]
    )
    order = torch.randperm(batch_size, generator=generator)
    source = torch.empty(batch_size, dtype=torch.long)
    source[order] = order.roll(-1)
    return CutMix(boxes=boxes, source=source)
