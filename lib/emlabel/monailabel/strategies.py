"""``random``: MONAI Label's random strategy without its zero-weight failure.

Stock ``Random`` draws an unlabeled image with weight ``now - last served`` (seconds), so
images served within the current second weigh 0; once every candidate was served in that
second ``random.choices`` fails ("Total of weights must be greater than zero", a 500 after
a few quick "Next Sample" clicks). Here the weight is ``1 + seconds since last served``
(never served: the age of the epoch), so recent images stay unlikely but never impossible.
"""

from __future__ import annotations

import random
import time
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy


class RandomStrategy(Strategy):
    """A random unlabeled image, favouring those not served for a while."""

    def __init__(self, *, seed: int | None = None) -> None:
        super().__init__("Random unlabeled image, least recently served favoured")
        self._rng = random.Random(seed)

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        strategy = request.get("strategy", "random")
        now = int(time.time())
        weights = []
        for image in images:
            weights.append(1 + max(0, now - _served_at(datastore.get_image_info(image), strategy)))
        choice = self._rng.choices(range(len(images)), weights=weights)[0]
        return {"id": images[choice], "weight": weights[choice]}


def _served_at(info: Any, strategy: str) -> int:
    """When ``strategy`` last served the image (0: never, or unreadable info)."""
    try:
        return int(info.get("strategy", {}).get(strategy, {}).get("ts", 0))
    except (AttributeError, TypeError, ValueError):
        return 0
