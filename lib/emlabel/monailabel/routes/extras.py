"""EMLabel's own routes (bundle export, statistics, the review page) and stock routes that
do not apply.

``/proxy/dicom/...`` only exists in DICOMweb mode (stock MONAI Label answers 500 in folder
mode) and ``/logs/gpu`` only where ``nvidia-smi`` exists; elsewhere both are a 404 with
the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from fastapi import BackgroundTasks, Body, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from monailabel.endpoints import ohif as stock_ohif
from monailabel.endpoints import proxy as stock_proxy
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import get_mime_type

from emlabel.errors import InvalidRequestError, NotFoundError
from emlabel.monailabel.http import http_errors, to_http
from emlabel.monailabel.routes.common import user_of


@http_errors
def export_bundle_zip(model: str, background_tasks: BackgroundTasks) -> FileResponse:
    """``GET /emlabel/bundle/{model}``: the trained model as a verified MONAI bundle (zip)."""
    from emlabel.bundle import export_bundle

    checkpoint = app_instance().model_checkpoint(model)
    workdir = Path(tempfile.mkdtemp(prefix="emlabel-bundle-"))
    background_tasks.add_task(shutil.rmtree, workdir, True)
    try:
        bundle = export_bundle(checkpoint=checkpoint, out_dir=workdir / model)
        archive = shutil.make_archive(str(workdir / f"{model}_bundle"), "zip", bundle.parent, model)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return FileResponse(archive, media_type="application/zip", filename=f"{model}_bundle.zip")


@http_errors
def put_statistic(request: Request, image: str, body: Any = Body(...)) -> Any:
    """``PUT /emlabel/stats?image=ID``: a structure's volume/area and/or clicked voxels.

    Body: ``{"structure": "lesion", "statistic": "volume_mm3", "value": 1234.5,
    "clicks_inside": [[x, y, z], ...], "clicks_outside": [...]}`` (voxel indices of the
    image file). Earlier values are kept in the structure's history.
    """
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    datastore = app_instance().datastore()
    return datastore.store_statistic(image, body, source="api", user=user_of(request))


@http_errors
def review_page() -> HTMLResponse:
    """``GET /emlabel/review/``: the review queue (HTML): cases in the strategy's order with
    their reasons, the budget, the reviews so far."""
    from emlabel.methods.em import EMFiles
    from emlabel.monailabel.review_page import render_review_page, review_queue

    app = app_instance()
    queue = review_queue(app.datastore(), settings=app.settings, files=EMFiles(app.model_dir))
    return HTMLResponse(render_review_page(queue))


async def proxy_dicom(request: Request, path: str) -> Response:
    """``/proxy/dicom/...``: MONAI Label's DICOMweb proxy, only in DICOMweb mode."""
    if not app_instance().studies.startswith(("http://", "https://")):
        raise to_http(NotFoundError("no DICOMweb server: this server serves a studies folder"))
    op, _, rest = path.partition("/")
    if op in ("wado", "qido", "stow"):
        return await stock_proxy.proxy_dicom(request, op, rest)
    return await stock_proxy.proxy_dicom(request, "", path)


@http_errors
def gpu_info() -> Response:
    """``GET /logs/gpu``: ``nvidia-smi`` output, or 404 on a machine without it."""
    if shutil.which("nvidia-smi") is None:
        raise NotFoundError("no GPU information: nvidia-smi is not installed on this server")
    out = subprocess.run(["nvidia-smi"], capture_output=True, timeout=30, check=False)
    return Response(content=out.stdout.decode("utf-8", "replace"), media_type="text/plain")


def not_served(what: str, instead: str) -> Any:
    """A handler answering 404: ``what`` is not served by EMLabel (use ``instead``)."""

    def handler(request: Request) -> None:
        raise to_http(NotFoundError(f"{what} is not served by EMLabel; {instead}"))

    handler.__doc__ = f"Not served: {what} ({instead})."
    return handler


def ohif_file(path: str) -> FileResponse:
    """``GET /ohif/...``: OHIF's files; any other path is its app page (never a 5xx).

    Stock MONAI Label joins the path unchecked (``..`` reaches a folder: 500).
    """
    root = (Path(stock_ohif.__file__).resolve().parent / "static" / "ohif").resolve()
    file = (root / path).resolve() if path else root / "index.html"
    if not file.is_relative_to(root) or not file.is_file():
        file = root / "index.html"
    return FileResponse(file, media_type=get_mime_type(str(file)))


@http_errors
def get_logs(lines: int = 300, html: bool = True, text: bool = False, refresh: int = 0) -> Response:
    """``GET /logs/``: the server log (stock handler; ``lines`` 0..100000, off the event loop)."""
    from monailabel.config import settings as ml_settings
    from monailabel.endpoints.logs import get_logs as stock_get_logs

    if not 0 <= lines <= MAX_LOG_LINES or not 0 <= refresh <= 3600:
        raise InvalidRequestError(f"lines must be 0..{MAX_LOG_LINES} and refresh 0..3600")
    log = Path(ml_settings.MONAI_LABEL_APP_DIR) / "logs" / "app.log"
    return stock_get_logs(str(log), lines, html, text, refresh)


@http_errors
def download_dataset(background_tasks: BackgroundTasks, limit_cases: int | None = None) -> Any:
    """``GET /datastore/dataset``: the finals as a zip (removed once sent; 404 if none)."""
    if limit_cases is not None and not 1 <= limit_cases <= 100_000:
        raise InvalidRequestError("limit_cases must be 1..100000")
    datastore = app_instance().datastore()
    if not datastore.get_labeled_images():
        raise NotFoundError("no image has a final label yet: nothing to download")
    path = datastore.get_dataset_archive(limit_cases)
    background_tasks.add_task(Path(path).unlink, True)
    return FileResponse(path, media_type="application/zip", filename="dataset.zip")


MAX_LOG_LINES = 100_000
_NO_SESSIONS = "infer on a datastore image id or send the image file to POST /infer/{model}"
_NO_WSI = "EMLabel segments radiology volumes and images"

ROUTES: dict[str, dict[str, Any]] = {
    "GET": {"/emlabel/bundle/{model}": export_bundle_zip, "/proxy/dicom/{path:path}": proxy_dicom,
            "/logs/gpu": gpu_info, "/logs/": get_logs, "/ohif/{path:path}": ohif_file,
            "/datastore/dataset": download_dataset, "/emlabel/review/": review_page,
            "/session/{session_id}": not_served("sessions", _NO_SESSIONS)},
    "PUT": {"/emlabel/stats": put_statistic, "/session/": not_served("sessions", _NO_SESSIONS)},
    "DELETE": {"/session/{session_id}": not_served("sessions", _NO_SESSIONS)},
    "POST": {"/proxy/dicom/{path:path}": proxy_dicom,
             "/infer/wsi/{model}": not_served("whole-slide inference", _NO_WSI),
             "/infer/wsi_v2/{model}": not_served("whole-slide inference", _NO_WSI)},
}  # fmt: skip
