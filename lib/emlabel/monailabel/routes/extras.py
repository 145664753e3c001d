"""EMLabel's own routes (bundle export, statistics) and stock routes that do not apply.

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
from fastapi.responses import FileResponse, Response
from monailabel.endpoints import proxy as stock_proxy
from monailabel.interfaces.utils.app import app_instance

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


def routes() -> list[tuple[str, str, Any, str]]:
    return [
        ("GET", "/emlabel/bundle/{model}", export_bundle_zip, "Export a model as a MONAI bundle"),
        ("PUT", "/emlabel/stats", put_statistic, "Store a structure's volume/area and clicks"),
        ("GET", "/proxy/dicom/{path:path}", proxy_dicom, "DICOMweb proxy (DICOMweb mode)"),
        ("POST", "/proxy/dicom/{path:path}", proxy_dicom, "DICOMweb proxy (DICOMweb mode)"),
        ("GET", "/logs/gpu", gpu_info, "GPU information (nvidia-smi)"),
    ]
