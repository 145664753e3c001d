"""Model checkpoints: published atomically, loaded without unpickling code, kept as versions.

A checkpoint is ``{"model": state_dict, "emlabel": metadata}`` (plus method extras such as
CGS's full teacher); MONAI Label's BasicInferTask loads the ``model`` key. Publishing
writes a temp file and renames it, so the served model is always a complete file and a
crash leaves the old one in place. The file a checkpoint replaces, or that a client
deletes, is first kept under ``<model dir>/versions/`` (models are versions too).

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers
only. A file that would need arbitrary unpickling (a client's pickle that runs code) is
refused with :class:`CheckpointError` before anything in it executes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from emlabel.atomic import atomic_write_with
from emlabel.errors import EMLabelError

META_KEY = "emlabel"
MODEL_KEY = "model"
VERSIONS_DIR = "versions"


class CheckpointError(EMLabelError):
    """A model file that is not a safe EMLabel checkpoint (or does not fit its network)."""

    status_code = 422


def publish_checkpoint(
    path: str | os.PathLike[str],
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write the checkpoint atomically (old file kept as a version); returns its sha256."""
    payload = {MODEL_KEY: state_dict, META_KEY: meta} | (extra or {})

    def write(tmp: Path) -> None:
        torch.save(payload, tmp)
        keep_model_version(path, reason="replaced by a newer model")  # only once complete

    atomic_write_with(write, path)
    return file_sha256(path)


def load_payload(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The whole checkpoint dict, read safely (tensors and plain containers only)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{Path(path).name} is not a safe checkpoint (it holds objects other than "
            "tensors and plain containers); save a state dict with torch.save"
        ) from e
    except Exception as e:  # truncated, not a torch file, ...
        raise CheckpointError(f"{Path(path).name} is not a readable checkpoint ({e})") from e
    if not isinstance(payload, dict):
        raise CheckpointError(f"{Path(path).name} holds no state dict")
    return payload


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and metadata of a published checkpoint (read safely)."""
    payload = load_payload(path)
    if MODEL_KEY in payload and isinstance(payload[MODEL_KEY], dict):
        meta = payload.get(META_KEY, {})
        return payload[MODEL_KEY], meta if isinstance(meta, dict) else {}
    return payload, {}


def check_fits(path: str | os.PathLike[str], network: torch.nn.Module) -> dict[str, Any]:
    """The payload of ``path`` if its state dict loads strictly into ``network``."""
    payload = load_payload(path)
    state = payload.get(MODEL_KEY, payload)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{Path(path).name}: '{MODEL_KEY}' is not a state dict of tensors")
    try:
        network.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{Path(path).name} does not fit this model's network: {str(e)[:500]}"
        ) from e
    return payload


def keep_model_version(path: str | os.PathLike[str], *, reason: str) -> Path | None:
    """Keep the current file at ``path`` under ``versions/`` before it is replaced or removed.

    Named ``<stem>-<UTC time>-<sha256[:12]><suffix>``; a hard link when possible (no copy,
    no window without a file at ``path``), else an atomic copy. Returns the kept path.
    """
    path = Path(path)
    if not path.is_file():
        return None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    kept = path.parent / VERSIONS_DIR / f"{path.stem}-{stamp}-{file_sha256(path)[:12]}{path.suffix}"
    kept.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(path, kept)
    except OSError:
        atomic_write_with(lambda tmp: tmp.write_bytes(path.read_bytes()), kept)
    (kept.parent / f"{kept.name}.reason.txt").write_text(reason + "\n", encoding="utf-8")
    return kept


def model_versions(path: str | os.PathLike[str]) -> list[Path]:
    """Earlier files of the model at ``path``, oldest first."""
    path = Path(path)
    folder = path.parent / VERSIONS_DIR
    return sorted(folder.glob(f"{path.stem}-*{path.suffix}"))


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
