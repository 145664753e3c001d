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

import torch
from fastapi import File, UploadFile
from monailabel.interfaces.utils.app import app_instance

from emlabel.checkpoints import (
    MODEL_KEY,
    check_fits,
    file_sha256,
    keep_model_version,
    model_versions,
    publish_checkpoint,
)
from emlabel.errors import InvalidRequestError, NotFoundError
from emlabel.labels.provenance import now_iso
from emlabel.learners.cgs import FULL_MODEL_KEY
from emlabel.monailabel.http import http_errors
from emlabel.monailabel.routes.common import max_upload_bytes, staged_upload
from emlabel.settings import settings_to_dict


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
        payload = check_fits(path, copy.deepcopy(task.network).cpu())
    state = payload.get(MODEL_KEY, payload)
    extra = {
        key: value
        for key, value in payload.items()
        if key == FULL_MODEL_KEY and isinstance(value, dict)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    }  # fmt: skip
    settings = app_instance().settings
    # The client's metadata is not kept (it is untrusted and read by exports): the server's.
    meta = {"method": model, "source": "upload", "uploaded_at": now_iso(),
            "labels": list(settings.labels), "settings": settings_to_dict(settings)}  # fmt: skip
    existed = target.is_file()
    publish_checkpoint(target, state, meta, extra=extra)  # keeps the replaced file first
    kept = model_versions(target)[-1] if existed else None
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


ROUTES: dict[str, dict[str, Any]] = {
    "PUT": {"/model/{model}": put_model},
    "DELETE": {"/model/{model}": delete_model},
}
