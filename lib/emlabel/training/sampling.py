"""What one epoch trains on, the same for one process or many.

An epoch is a list of draws: a shuffled pass over the items, or, when that gives fewer
than ``min_steps_per_epoch`` batches (``ceil(n / batch_size)``), ``min_steps * batch_size``
items drawn with replacement (nnU-Net fixes its steps per epoch the same way). Both come
from a generator seeded by ``(seed, epoch)``, and draw ``p`` is augmented with the random
transforms seeded by ``(seed, epoch, p)``, so a sample does not depend on which process
makes it.

Global batch ``b`` is draws ``[b * B, (b + 1) * B)``. Under torchrun each of ``N`` ranks
loads ``B / N`` of them (rank ``r`` takes draws ``r, r + N, ...``: torch's
``DistributedSampler`` without shuffling), and DistributedDataParallel averages the ranks'
gradients, so the update equals the one-process update of the same global batch (up to
float rounding; exactly the same draws when the epoch length is a multiple of ``B``; else
the sampler repeats a few draws to give every rank the same count). Written by hand: MONAI
and torch seed a DataLoader's workers, not each sample.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader
from torch.utils.data import Dataset, DistributedSampler

from emlabel.distributed import world
from emlabel.errors import InvalidRequestError
from emlabel.settings import AppSettings

_SEED_STRIDE = 1_000_003  # a prime: (seed, epoch, draw) -> distinct generator seeds


def epoch_length(n_items: int, settings: AppSettings) -> tuple[int, bool]:
    """(draws per epoch, with replacement?) for ``n_items`` training items."""
    steps, batch = settings.min_steps_per_epoch, settings.train_batch_size
    if math.ceil(n_items / batch) >= steps:
        return n_items, False
    return steps * batch, True


class EpochDraws(Dataset):
    """The draws of the current epoch over a cached dataset (call :meth:`set_epoch`)."""

    def __init__(self, base: CacheDataset, *, settings: AppSettings) -> None:
        self.base, self.seed = base, int(settings.seed)
        self.length, self.replacement = epoch_length(len(base), settings)
        self.order = torch.arange(0)
        self.epoch = 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s items (the same on every rank)."""
        generator = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + epoch)
        n = len(self.base)
        if self.replacement:
            self.order = torch.randint(n, (self.length,), generator=generator)
        else:
            self.order = torch.randperm(n, generator=generator)
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, draw: int) -> Any:
        seed = (self.seed * _SEED_STRIDE + self.epoch) * _SEED_STRIDE + draw
        self.base.transform.set_random_state(seed=seed % (2**32))
        return self.base[int(self.order[draw])]


def rank_batch_size(settings: AppSettings) -> int:
    """Each rank's share of the global batch ``train_batch_size`` (400 unless it divides)."""
    ranks, batch = world().size, settings.train_batch_size
    if batch % ranks:
        raise InvalidRequestError(
            f"train_batch_size {batch} is not a multiple of the {ranks} processes: each "
            "process loads an equal share of every batch"
        )
    return batch // ranks


def epoch_loader(draws: EpochDraws, *, settings: AppSettings) -> DataLoader:
    """This rank's batches of ``draws`` (all of them in one process)."""
    here = world()
    sampler = (
        DistributedSampler(draws, num_replicas=here.size, rank=here.rank, shuffle=False)
        if here.distributed
        else None
    )
    return DataLoader(
        draws, batch_size=rank_batch_size(settings), sampler=sampler, shuffle=False,
        num_workers=0,
    )  # fmt: skip
