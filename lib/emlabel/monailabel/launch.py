"""Train request option ``processes``: the server's training under ``torchrun``.

``POST /train/segmentation {"processes": 2}`` (or ``em``) makes MONAI Label's training
process start ``torchrun --standalone --nproc_per_node 2 -m emlabel.cli train ...`` over
the same app folder, studies and ``--conf`` settings, wait for it, and answer with the
trainer's stats, which rank 0 wrote (:mod:`emlabel.distributed`). MONAI Label's own
multi-GPU flag (``multi_gpu: true``, what its clients send) maps to one process per GPU
when there are several; on CPU it changes nothing, as in MONAI Label.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import torch

from emlabel.errors import EMLabelError, InvalidRequestError
from emlabel.monailabel.tasks import REQUEST_PASSTHROUGH

logger = logging.getLogger(__name__)

PROCESSES_KEY = "processes"


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def process_limit() -> int:
    """At most one process per GPU, or per CPU core without GPUs."""
    return gpu_count() or os.cpu_count() or 1


def requested_processes(request: Mapping[str, Any], *, dicomweb: bool = False) -> int:
    """The request's ``processes`` (default 1; ``multi_gpu`` -> one per GPU), bounded:
    a 400 for anything but an integer from 1 to :func:`process_limit`, and for more than
    one in DICOMweb mode (the headless commands read a studies folder)."""
    raw = request.get(PROCESSES_KEY)
    if raw is None:
        multi_gpu = request.get("multi_gpu") in (True, "true") and not dicomweb
        return gpu_count() if multi_gpu and gpu_count() > 1 else 1
    limit = process_limit()
    if isinstance(raw, bool) or not isinstance(raw, int | str) or not str(raw).isdigit():
        raise InvalidRequestError(f"train option '{PROCESSES_KEY}' must be an integer, not {raw!r}")
    value = int(raw)
    if not 1 <= value <= limit:
        raise InvalidRequestError(
            f"train option '{PROCESSES_KEY}' must be from 1 to {limit} (one per "
            f"{'GPU' if gpu_count() else 'CPU core'} here), not {value}"
        )
    if value > 1 and dicomweb:
        raise InvalidRequestError(
            f"train option '{PROCESSES_KEY}' above 1 needs a studies folder; this server reads "
            "a DICOMweb server (run emlabel train under torchrun on a folder instead)"
        )
    return value


def trainer_options(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request without ``processes`` and MONAI Label's own keys: the trainer's options."""
    return {k: v for k, v in request.items() if k not in REQUEST_PASSTHROUGH and k != PROCESSES_KEY}


def torchrun_train(
    *,
    app_dir: str,
    studies: str,
    conf: Mapping[str, Any],
    method: str,
    options: Mapping[str, Any],
    processes: int,
) -> None:
    """Run ``emlabel train --method METHOD`` under torchrun with ``processes`` ranks; a
    failure raises with the end of its output."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", "-m", "emlabel.cli", "train",
               "--studies", studies, "--app", app_dir, "--method", method]  # fmt: skip
    for key, value in conf.items():
        command += ["--conf", str(key), str(value)]
    for key, value in options.items():
        command += ["--option", f"{key}={json.dumps(value)}"]
    logger.info("training %s in %d processes: %s", method, processes, " ".join(command))
    proc = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace",
                          check=False)  # fmt: skip
    output = (proc.stdout or "") + (proc.stderr or "")
    for line in output.splitlines()[-40:]:
        logger.info("torchrun: %s", line)
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-15:])
        raise EMLabelError(f"training {method} in {processes} processes failed:\n{tail}")
