"""The epoch loop every EMLabel trainer shares (nnU-Net v2's trainer skeleton, small).

A trainer subclasses :class:`EpochTrainer` and overrides hooks; the loop itself is here
once: resume from the history, one :meth:`~EpochTrainer.train_epoch`, then
:meth:`~EpochTrainer.after_epoch` (validation, AIDE's corrections, ...), record, report
progress. Seeding happens in each trainer's constructor (the order in which it draws
random numbers is part of its result), and checkpoints go through
:mod:`emlabel.checkpoints` from :meth:`~EpochTrainer.state_dict`.

Why not MONAI's ``SupervisedTrainer``: its ignite engine runs one ``_iteration`` per
batch of a DataLoader. AIDE's step reads two networks' label copies and rewrites them
between epochs, CGS samples labeled and unlabeled batches itself, and the statistics loss
needs per-image targets beside each batch; each would override the engine's iteration,
data flow and state, which leaves little of it. An epoch hook keeps every method's own
step and shares the rest.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import torch

from emlabel.allocator import keep_freed_memory
from emlabel.progress import advance

S = TypeVar("S")
"""A trainer's per-epoch statistics record."""


class EpochTrainer(abc.ABC, Generic[S]):
    """Epoch loop with hooks; subclasses implement :meth:`train_epoch` and :meth:`state_dict`."""

    #: How many epochs :meth:`fit` runs when not told (subclasses set it from their options).
    max_epochs: int = 1

    def __init__(self) -> None:
        self.history: list[S] = []

    @abc.abstractmethod
    def train_epoch(self, epoch0: int) -> S:
        """Train one epoch (0-based index) and return its statistics."""

    def after_epoch(self, epoch0: int, stats: S) -> S:
        """After each epoch: validate, correct labels, ... (default: nothing)."""
        return stats

    @abc.abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint of this trainer stores."""

    def fit(
        self, max_epochs: int | None = None, *, on_epoch: Callable[[S], Any] | None = None
    ) -> list[S]:
        """Train until ``max_epochs`` epochs (default :attr:`max_epochs`) are in the history.

        Resumes after the epochs already run; ``on_epoch`` gets each epoch's statistics.
        Returns the whole history.
        """
        keep_freed_memory()
        total = self.max_epochs if max_epochs is None else max_epochs
        for epoch0 in range(len(self.history), total):
            stats = self.after_epoch(epoch0, self.train_epoch(epoch0))
            self.history.append(stats)
            advance(f"{self.progress_name} epochs", epoch0 + 1, total)
            if on_epoch is not None:
                on_epoch(stats)
        return self.history

    @property
    def progress_name(self) -> str:
        """How progress bars name this trainer (its class name without ``Trainer``)."""
        return type(self).__name__.removesuffix("Trainer") or type(self).__name__
