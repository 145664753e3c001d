"""Several processes, one result: ``torch.distributed`` as ``torchrun`` starts it.

``torchrun --nproc_per_node N`` (or ``--nnodes`` / ``--rdzv-endpoint`` across machines)
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in each worker's
environment; :func:`distributed_session` joins the process group from them (NCCL on GPUs,
gloo on CPU). Without torchrun everything here is the one-process case: ``world()`` is
rank 0 of 1, :func:`sharded_map` a plain loop, the collectives no-ops, so library code
calls them unconditionally.

The rules the rest of EMLabel follows under torchrun:

- every rank runs the same code over the same inputs (the same app, items and options);
- per-image work (ensemble inference, pseudo-labels, the expert's choices) is split with
  :func:`sharded_map` (rank ``r`` does items ``r, r + N, ...``) and gathered on every rank
  in input order, so each rank takes the same decisions as one process would;
- training wraps the network in ``DistributedDataParallel`` (:mod:`emlabel.training.sampling`
  keeps each global batch the one a single process would draw);
- only rank 0 writes (models, label versions, image info, stats), after a barrier that
  every rank reaches only when its work is done (:mod:`emlabel.monailabel.runs`).

Gathering uses ``all_gather_object`` (pickle): only between EMLabel's own ranks, never
anything a client sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from emlabel.progress import advance

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: How long a collective waits for the slowest rank (a validation pass or a long E-step
#: shard on rank 0 keeps the others waiting in the next collective).
COLLECTIVE_TIMEOUT = dt.timedelta(minutes=60)


@dataclasses.dataclass(frozen=True, kw_only=True)
class World:
    """This process's place among the ranks of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The current process group's rank and size (rank 0 of 1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return World(
            rank=dist.get_rank(),
            size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    return World()


def launched_by_torchrun() -> bool:
    """True in a worker ``torchrun`` started with more than one process in all."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ


def backend() -> str:
    """NCCL when this process has a GPU, gloo (CPU) otherwise."""
    return "nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def distributed_session() -> Iterator[World]:
    """Join torchrun's process group for the duration (nothing to join without torchrun)."""
    if not launched_by_torchrun() or dist.is_initialized():
        yield world()
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend(), timeout=COLLECTIVE_TIMEOUT)
    here = world()
    logger.info("rank %d of %d joined (%s)", here.rank, here.size, backend())
    try:
        yield here
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (fails when a rank died)."""
    if world().distributed:
        dist.barrier()


def broadcast(value: T, *, src: int = 0) -> T:
    """Rank ``src``'s ``value`` on every rank."""
    if not world().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_over_ranks(value: float) -> float:
    """The mean of every rank's ``value`` (``value`` itself in one process)."""
    here = world()
    if not here.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total[0]) / here.size


def sharded_map(
    fn: Callable[[T], R], items: Sequence[T], *, progress: str | None = None
) -> list[R]:
    """``[fn(x) for x in items]``, each rank computing items ``rank, rank + size, ...``;
    the results gathered on every rank, in input order. ``progress``: the name of the
    progress bar counting this rank's items."""
    here = world()
    mine: dict[int, R] = {}
    shard = range(here.rank, len(items), here.size)
    for i in shard:
        mine[i] = fn(items[i])
        if progress is not None:
            advance(progress, len(mine), len(shard))
    if not here.distributed:
        return [mine[i] for i in range(len(items))]
    parts: list[Any] = [None] * here.size
    dist.all_gather_object(parts, mine)
    merged: dict[int, R] = {}
    for part in parts:
        merged |= part
    return [merged[i] for i in range(len(items))]


@contextlib.contextmanager
def shared_temporary_directory(*, prefix: str) -> Iterator[Path]:
    """A temporary folder all ranks write into: rank 0 makes it (in ``tempfile``'s folder:
    set ``TMPDIR`` to shared storage when the ranks span machines) and removes it when
    every rank is done."""
    here = world()
    made = tempfile.mkdtemp(prefix=prefix) if here.main else None
    path = Path(broadcast(made))
    try:
        yield path
        barrier()
    finally:
        if here.main:
            shutil.rmtree(path, ignore_errors=True)
