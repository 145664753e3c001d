"""``/datastore`` routes that write: validated, bounded, versioned, never destructive.

They replace the stock handlers of the same paths (same parameters, so Slicer, OHIF and
``MONAILabelClient`` work unchanged) and differ where stock MONAI Label loses data or
answers 500: an empty ``tag`` is refused instead of becoming ``final``; deletes archive;
``emlabel*`` info keys are EMLabel's own; uploads are capped and always cleaned up; the
work runs in FastAPI's thread pool, off the event loop (these handlers are plain ``def``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import File, Form, Request, UploadFile
from fastapi.responses import FileResponse
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import file_checksum, get_mime_type

from emlabel.data.validation import check_image_header, check_image_id
from emlabel.errors import InvalidRequestError, NotFoundError
from emlabel.labels.versions import FINAL_TAG
from emlabel.monailabel.http import http_errors
from emlabel.monailabel.routes.common import (
    max_upload_bytes,
    parse_json_object,
    staged_upload,
    user_of,
)

logger = logging.getLogger(__name__)

#: Image-info keys only EMLabel writes (reviews, verifier scores, statistics history, ...).
RESERVED_INFO_PREFIX = "emlabel"
#: Info keys MONAI Label itself keeps (served-by-strategy times, file time and name).
RESERVED_INFO_KEYS = frozenset({"strategy", "ts", "name"})


CHECKSUM_ALGORITHMS = ("SHA256", "SHA1", "MD5")


def _datastore() -> Any:
    return app_instance().datastore()


def _require_image(image_id: str) -> str:
    datastore = _datastore()
    require = getattr(datastore, "require_image", None)
    if require is None:
        check_image_id(image_id)
        return datastore.get_image_uri(image_id)
    return require(image_id)


def _check_info(info: dict[str, Any], what: str) -> dict[str, Any]:
    reserved = sorted(
        k for k in info if str(k).startswith(RESERVED_INFO_PREFIX) or k in RESERVED_INFO_KEYS
    )
    if reserved:
        raise InvalidRequestError(
            f"{what} keys {reserved} are written by the server only (reviews, scores, "
            "statistics, strategy times, file names)"
        )
    return info


@http_errors
def save_label(
    request: Request,
    image: str,
    params: str = Form("{}"),
    tag: str = FINAL_TAG,
    label: UploadFile = File(...),
) -> dict[str, Any]:
    """``PUT /datastore/label``: store a human final or an import as a new version."""
    if not tag:
        raise InvalidRequestError("label tag is empty; give tag=final for a human label")
    info = parse_json_object(params, "params")
    _check_info(info, "label info")
    _require_image(image)
    instance = app_instance()
    user = user_of(request)
    if user is not None:
        info["user"] = user
    with staged_upload(label, max_bytes=max_upload_bytes()) as path:
        instance.datastore().save_label(image, str(path), tag, info)
    result = instance.on_save_label(image, image) or {}
    return result | {"image": image, "label": image}


@http_errors
def add_image(
    request: Request,
    image: str | None = None,
    params: str = Form("{}"),
    file: UploadFile = File(...),
) -> dict[str, Any]:
    """``PUT /datastore/image``: a new image (never over an existing one)."""
    info = parse_json_object(params, "params")
    _check_info(info, "image info")
    if image is not None:
        check_image_id(image)
    user = user_of(request)
    if user is not None:
        info["user"] = user
    with staged_upload(file, max_bytes=max_upload_bytes()) as path:
        # header bounds first; the datastore's add_image then reads the data itself
        check_image_header(path, target_spacing=app_instance().settings.target_spacing)
        name = os.path.basename(file.filename or "")
        image_id = image or name.split(".")[0]
        stored = _datastore().add_image(image_id, str(path), info)
    return {"image": stored}


@http_errors
def remove_label(request: Request, id: str, tag: str) -> dict[str, Any]:
    """``DELETE /datastore/label``: the label is kept as a version marked deleted."""
    datastore = _datastore()
    if not hasattr(datastore, "versions"):
        raise InvalidRequestError("this datastore keeps no versions; deletes are refused")
    datastore.remove_label(id, tag, user=user_of(request))
    return {}


@http_errors
def remove_image(request: Request, id: str) -> dict[str, Any]:
    """``DELETE /datastore/image``: refused for labeled images; others are kept aside."""
    datastore = _datastore()
    if app_instance().studies.startswith(("http://", "https://")):
        raise InvalidRequestError("images live on the DICOMweb server; delete them there")
    datastore.remove_image(id, user=user_of(request))
    return {}


@http_errors
def put_image_info(request: Request, image: str, info: str = Form("{}")) -> Any:
    """``PUT /datastore/image/info``: merge client keys (``emlabel*`` keys refused)."""
    values = _check_info(parse_json_object(info, "info"), "image info")
    _require_image(image)
    user = user_of(request)
    if user is not None:
        values["user"] = user
    return _datastore().update_image_info(image, values)


@http_errors
def put_label_info(request: Request, label: str, tag: str, info: str = Form("{}")) -> Any:
    """``PUT /datastore/label/info``: merge client keys into a label's info."""
    values = _check_info(parse_json_object(info, "info"), "label info")
    _require_image(label)
    user = user_of(request)
    if user is not None:
        values["user"] = user
    return _datastore().update_label_info(label, tag, values)


def put_label_info_deprecated(
    request: Request, label: str, tag: str, params: str = Form("{}")
) -> Any:
    """``PUT /datastore/updatelabelinfo`` (stock's deprecated name, ``params`` field)."""
    return put_label_info(request, label, tag, params)


@http_errors
def get_image(request: Request, image: str, check_sum: str | None = None) -> Any:
    """``GET``/``HEAD /datastore/image``: an image of the datastore (ids only)."""
    path = _require_image(image)
    if not os.path.isfile(path):
        raise NotFoundError(f"image '{image}' has no file on this server")
    if request.method == "HEAD":
        if check_sum:
            algo, _, digest = check_sum.rpartition(":")
            algo = algo.upper() or "SHA256"
            if algo not in CHECKSUM_ALGORITHMS:
                raise InvalidRequestError(
                    f"checksum algorithm {algo!r} is not one of {', '.join(CHECKSUM_ALGORITHMS)}"
                )
            if digest != file_checksum(path, algo=algo):
                raise NotFoundError(f"image '{image}' does not match checksum {check_sum}")
        return {}
    return FileResponse(path, media_type=get_mime_type(path), filename=os.path.basename(path))


@http_errors
def get_label(label: str, tag: str) -> Any:
    """``GET /datastore/label``: a stored label version of a datastore image."""
    _require_image(label)
    datastore = _datastore()
    if not tag or not datastore.get_label_info(label, tag):
        raise NotFoundError(f"image '{label}' has no label tagged '{tag}'")
    path = datastore.get_label_uri(label, tag)
    if not path or not os.path.isfile(path):
        raise NotFoundError(f"image '{label}' has no label file tagged '{tag}'")
    return FileResponse(path, media_type=get_mime_type(path), filename=os.path.basename(path))


@http_errors
def head_label(image: str, tag: str) -> dict[str, Any]:
    """``HEAD /datastore/label`` (stock names the id ``image`` here)."""
    get_label(image, tag)
    return {}


def listing(output: str | None = None) -> Any:
    """``GET /datastore/``: stock's listing (``output`` stats / train / all), in the pool."""
    from monailabel.endpoints.datastore import ResultType
    from monailabel.endpoints.datastore import datastore as stock_listing

    try:
        kind = ResultType(output) if output else None
    except ValueError as e:
        valid = ", ".join(t.value for t in ResultType)
        raise InvalidRequestError(f"output {output!r} is not one of {valid}") from e
    return stock_listing(kind)


ROUTES: dict[str, dict[str, Any]] = {
    "GET": {"/datastore/": http_errors(listing), "/datastore/image": get_image, "/datastore/label": get_label},
    "HEAD": {"/datastore/image": get_image, "/datastore/label": head_label},
    "PUT": {"/datastore/label": save_label, "/datastore/image": add_image, "/datastore/": add_image,
            "/datastore/image/info": put_image_info, "/datastore/label/info": put_label_info,
            "/datastore/updatelabelinfo": put_label_info_deprecated},
    "DELETE": {"/datastore/label": remove_label, "/datastore/image": remove_image, "/datastore/": remove_image},
}  # fmt: skip
"""method -> path -> handler (the handler's first docstring line is the route's summary)."""
