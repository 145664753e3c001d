"""Model checkpoints: published atomically, identified by checksum.

A checkpoint is ``{"model": state_dict, "emlabel": metadata}``; MONAI Label's
BasicInferTask loads the ``model`` key. Publishing writes a temp file and renames it, so
the served model is always a complete file and a crash leaves the old one in place.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from emlabel.atomic import atomic_write_with

META_KEY = "emlabel"


def publish_checkpoint(
    path: str | os.PathLike[str],
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write the checkpoint atomically; returns its sha256. ``extra`` adds other keys."""
    payload = {"model": state_dict, META_KEY: meta} | (extra or {})
    atomic_write_with(lambda tmp: torch.save(payload, tmp), path)
    return file_sha256(path)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and metadata of a published checkpoint."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(payload, dict) and "model" in payload:
        return payload["model"], payload.get(META_KEY, {})
    return payload, {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_ref(path: str | os.PathLike[str]) -> str | None:
    """``<file name>@sha256:<first 16 hex>`` for provenance, or None if there is no model."""
    path = Path(path)
    if not path.exists():
        return None
    return f"{path.name}@sha256:{file_sha256(path)[:16]}"
