"""``PUT``/``DELETE /model/{name}``: only safe checkpoints, and the old model is kept.

Stock MONAI Label copies any uploaded file over the served model, which the app later
unpickles (a client's pickle then runs as the server's user), and ``DELETE`` renames the
model away. Here an upload must load with ``torch.load(weights_only=True)`` and fit the
task's network exactly; the model it replaces (or that ``DELETE`` removes) is kept under
``model/versions/``; the new file is published atomically.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from fastapi import File, UploadFile
from monailabel.interfaces.utils.app import app_instance

from emlabel.atomic import atomic_copy
from emlabel.checkpoints import check_fits, file_sha256, keep_model_version
from emlabel.errors import InvalidRequestError, NotFoundError
from emlabel.monailabel.http import http_errors
from emlabel.monailabel.routes.common import max_upload_bytes, staged_upload


def _checkpoint_task(model: str) -> tuple[Any, Path]:
    """The infer task ``model`` and its EMLabel checkpoint path (400 for bundles)."""
    instance = app_instance()
    instance.check_name("model", model, instance._infers)
    task = instance._infers[model]
    path = task.get_path(validate=False) if hasattr(task, "get_path") else None
    network = getattr(task, "network", None)
    if not path or not str(path).endswith(".pt") or network is None:
        raise InvalidRequestError(
            f"model '{model}' is not an EMLabel checkpoint (a served bundle is replaced by "
            "replacing its folder)"
        )
    return task, Path(path)


@http_errors
def put_model(model: str, file: UploadFile = File(...)) -> dict[str, Any]:
    """Replace a model with an uploaded checkpoint that loads safely into its network."""
    task, target = _checkpoint_task(model)
    with staged_upload(file, max_bytes=max_upload_bytes(), default_suffix=".pt") as path:
        check_fits(path, copy.deepcopy(task.network).cpu())
        kept = keep_model_version(target, reason=f"replaced by PUT /model/{model}")
        atomic_copy(path, target)
    return {
        "checksum": f"SHA256:{file_sha256(target)}",
        "modified_time": int(os.stat(target).st_mtime),
        "previous_version": kept.name if kept else None,
    }


@http_errors
def delete_model(model: str) -> dict[str, Any]:
    """Stop serving a model; its file is kept under ``model/versions/``."""
    _, target = _checkpoint_task(model)
    if not target.is_file():
        raise NotFoundError(f"model '{model}' has no model file")
    kept = keep_model_version(target, reason=f"deleted by DELETE /model/{model}")
    target.unlink()
    return {"kept_as": kept.name if kept else None}


def routes() -> list[tuple[str, str, Any, str]]:
    return [
        ("PUT", "/model/{model}", put_model, "Replace a model with a safe checkpoint"),
        ("DELETE", "/model/{model}", delete_model, "Stop serving a model (kept as a version)"),
    ]
