"""What every EMLabel route shares: JSON form fields, bounded uploads, the request's user.

Stock MONAI Label parses form fields with a bare ``json.loads`` (malformed JSON -> 500),
copies uploads into the system temp folder and never removes them when the request
fails. Here a form field that is not a JSON object is a 400, and an upload lives in the
server's own upload folder only for the duration of the request (removed in ``finally``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import Request, UploadFile

from emlabel.errors import EMLabelError, InvalidRequestError

UPLOAD_DIR_NAME = ".emlabel-uploads"
#: Suffixes EMLabel reads; anything else is stored with ``.bin`` and refused by the reader.
KNOWN_SUFFIXES = (
    ".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pt", ".ts",
    ".bin",
)  # fmt: skip


class PayloadTooLargeError(EMLabelError):
    """An upload larger than the ``max_upload_mb`` setting."""

    status_code = 413


def parse_json_object(raw: str | None, field: str) -> dict[str, Any]:
    """A form field holding a JSON object (empty = ``{}``); 400 naming the field otherwise."""
    if raw is None or not str(raw).strip():
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(f"form field '{field}' is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise InvalidRequestError(f"form field '{field}' must be a JSON object, not {raw[:40]!r}")
    return value


def upload_dir() -> Path:
    """The server's private folder for uploads in flight (inside the app folder)."""
    from monailabel.config import settings

    folder = Path(settings.MONAI_LABEL_APP_DIR or tempfile.gettempdir()) / UPLOAD_DIR_NAME
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _suffix(filename: str | None, default: str) -> str:
    name = (filename or "").lower()
    for suffix in sorted(KNOWN_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return default if not name else ".bin"


@contextlib.contextmanager
def staged_upload(
    upload: UploadFile, *, max_bytes: int, default_suffix: str = ".nii.gz"
) -> Iterator[Path]:
    """Copy an upload into a private temp file (at most ``max_bytes``); always removed after.

    The file keeps the upload's image suffix (readers choose a format by it) and a random
    name, so a client cannot name or predict it.
    """
    fd, name = tempfile.mkstemp(
        prefix=f"upload-{os.getpid()}-", suffix=_suffix(upload.filename, default_suffix),
        dir=upload_dir(),
    )  # fmt: skip
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            copied = 0
            while chunk := upload.file.read(1 << 20):
                copied += len(chunk)
                if copied > max_bytes:
                    raise PayloadTooLargeError(
                        f"upload is larger than {max_bytes >> 20} MB (setting max_upload_mb)"
                    )
                out.write(chunk)
        yield path
    finally:
        path.unlink(missing_ok=True)


def max_upload_bytes() -> int:
    """The ``max_upload_mb`` setting in bytes (1 GiB when the setting is not there)."""
    from monailabel.interfaces.utils.app import app_instance

    settings = getattr(app_instance(), "settings", None)
    return int(getattr(settings, "max_upload_mb", 1024)) << 20


def user_of(request: Request) -> str | None:
    """The authenticated user's name (None when auth is off)."""
    from emlabel.monailabel.auth import request_user

    return request_user(request)


def remove_later(path: str | os.PathLike[str]) -> None:
    """Background task: remove a result file once its response was sent."""
    with contextlib.suppress(OSError):
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
