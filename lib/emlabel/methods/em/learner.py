"""The ``Learner`` interface: what the EM engine needs from a segmentation method.

A learner trains on items with labels (M-step), gives an ensemble of label maps per image
(the critic's evidence and the expert's candidates) and one label map per image
(pseudo-labels), and saves its weights in the checkpoint its infer task serves. Learners
live in :mod:`emlabel.learners`; each wraps a trainer on :mod:`emlabel.training.skeleton`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from emlabel.methods.em.items import EMItem
from emlabel.training.loading import LoadedSet


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitSpec:
    """How long and with which seed one M-step trains, and who hears of each epoch."""

    epochs: int
    seed: int
    on_epoch: Callable[[Any], None] | None = None


class Learner(abc.ABC):
    """A trainable segmentation method the EM loop can drive."""

    name: ClassVar[str]
    """Registry name (``segmentation``, ``aide``, ``cgs``)."""
    model_file: ClassVar[str]
    """Checkpoint file of the infer task that serves this learner's model."""
    multiple_of: ClassVar[int] = 8
    """Spatial sizes its network needs (inputs are padded to a multiple)."""
    state_key: ClassVar[str] = "model"
    """Checkpoint key holding what :meth:`load_state_dict` takes (CGS: its full teacher)."""
    semi_supervised: ClassVar[bool] = False
    """True when it learns from unlabeled images itself (the loop then adds no pseudo-labels)."""
    distributed: ClassVar[bool] = False
    """True when :meth:`fit` trains as DistributedDataParallel under torchrun (the E-step's
    per-image work is sharded for every learner)."""

    @abc.abstractmethod
    def fit(self, items: Sequence[EMItem], spec: FitSpec) -> dict[str, Any]:
        """Train from scratch on ``items`` (labeled; unlabeled too if semi-supervised)."""

    @abc.abstractmethod
    def members(self, data: LoadedSet) -> list[list[np.ndarray]]:
        """Per image of ``data``, the label maps of the ensemble members (on its grid)."""

    def predict(self, data: LoadedSet) -> list[np.ndarray]:
        """One label map per image (default: the first ensemble member)."""
        return [m[0] for m in self.members(data)]

    @property
    @abc.abstractmethod
    def served(self) -> torch.nn.Module:
        """The module whose weights the checkpoint holds (what its infer task loads)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights of the checkpoint its infer task loads."""
        return self.served.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take weights saved by :meth:`state_dict`."""
        self.served.load_state_dict(state)
        self.served.eval()
        self._trained = True

    def checkpoint_extra(self) -> dict[str, Any]:
        """Extra checkpoint keys beside ``model`` (CGS: the full teacher). Default none."""
        return {}

    @property
    def trained(self) -> bool:
        return bool(getattr(self, "_trained", False))
