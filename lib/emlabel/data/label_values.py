"""Label files' stored values <-> the network's class indices, one rule for every reader.

A label file stores a value per structure (``settings.stored_values``: the ``labels``
name -> value map, or 1, 2, ... by default); the network and every method work with class
indices 0 (background), 1, 2, ... in the order of ``settings.labels``. Rules:

- with an explicit ``label_values`` map, values not in it are background (a 117-class
  TotalSegmentator map serves the two structures named);
- an app with one structure and no map reads a file whose maximum is above 1 as a 0..255
  mask: a pixel is the structure where its value is >= 128 (0/255 PNG masks, and masks
  resized with interpolation);
- otherwise values are class indices as stored, and values above the label map are an
  error (:func:`emlabel.data.validation.check_label`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import numpy as np
from monai.transforms import MapTransform

from emlabel.settings import AppSettings

MASK_THRESHOLD = 128
"""A 0..255 mask's structure pixels (one-structure apps without a value map)."""


def reads_as_mask(settings: AppSettings) -> bool:
    """True when label files of this app may be 0..255 masks of its one structure."""
    return len(settings.labels) == 1 and not settings.label_values


def to_class_indices(label: Any, settings: AppSettings) -> Any:
    """Stored values -> class indices (numpy array or torch tensor, same type and shape)."""
    if reads_as_mask(settings):
        if float(label.max()) <= 1:
            return label
        mask = label >= MASK_THRESHOLD
        return mask.astype(label.dtype) if isinstance(label, np.ndarray) else mask.to(label.dtype)
    if not settings.maps_label_values:
        return label
    return _remap(
        label, zip(settings.stored_values, range(1, len(settings.labels) + 1), strict=True)
    )


def to_stored_values(indices: Any, settings: AppSettings) -> Any:
    """Class indices -> the values the app's label files store (inverse of the map)."""
    if not settings.maps_label_values:
        return indices
    return _remap(
        indices, zip(range(1, len(settings.labels) + 1), settings.stored_values, strict=True)
    )


def _remap(label: Any, pairs: Iterable[tuple[int, int]]) -> Any:
    """``label`` with each ``old`` value replaced by ``new``; every other value 0."""
    out = label * 0
    for old, new in pairs:
        out[label == old] = new
    return out


class _LabelValuesd(MapTransform):
    """Dictionary transform applying ``convert(label, settings)`` to ``keys``."""

    convert: Callable[[Any, AppSettings], Any]

    def __init__(self, keys: Any, *, settings: AppSettings, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.settings = settings

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = type(self).convert(d[key], self.settings)
        return d


class ClassIndicesd(_LabelValuesd):
    """``keys`` (label maps as read) -> class indices (see module)."""

    convert = staticmethod(to_class_indices)


class StoredValuesd(_LabelValuesd):
    """``keys`` (class indices) -> the values label files store."""

    convert = staticmethod(to_stored_values)
