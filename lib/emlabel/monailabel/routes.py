"""EMLabel routes: request guards in front of stock routes, and bundle export.

``POST /train/{model}`` and ``POST /scoring/{method}`` hand the request to a subprocess
before the app sees it, so an unknown trainer or a bad option would fail there, unseen.
These guards run in the server process first and answer 404/400 with the reason; valid
requests go on to the stock handlers unchanged.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

from fastapi import BackgroundTasks, Depends
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.endpoints import scoring as stock_scoring
from monailabel.endpoints import train as stock_train
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from emlabel.monailabel.http import http_errors

logger = logging.getLogger(__name__)

_INSTALLED_TAG = "emlabel_guard"


async def guarded_train(
    model: str,
    params: dict | None = None,
    run_sync: bool | None = False,
    enqueue: bool | None = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    """Validate trainer name and options, then run the stock train endpoint."""
    http_errors(app_instance().check_train_request)(model, params)
    return stock_train.run_model(model, params, run_sync, enqueue)


async def guarded_scoring(
    method: str,
    params: dict | None = None,
    run_sync: bool | None = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    """Validate the scoring method name, then run the stock scoring endpoint."""
    instance = app_instance()
    http_errors(instance.check_name)("scoring method", method, instance._scoring_methods)
    return stock_scoring.run_method(method, params, run_sync)


def export_bundle_zip(
    model: str,
    background_tasks: BackgroundTasks,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    """``GET /emlabel/bundle/{model}``: the trained model as a verified MONAI bundle (zip)."""
    from emlabel.bundle import export_bundle

    checkpoint = http_errors(app_instance().model_checkpoint)(model)
    workdir = Path(tempfile.mkdtemp(prefix="emlabel-bundle-"))
    background_tasks.add_task(shutil.rmtree, workdir, True)
    bundle = http_errors(export_bundle)(checkpoint=checkpoint, out_dir=workdir / model)
    archive = shutil.make_archive(str(workdir / f"{model}_bundle"), "zip", bundle.parent, model)
    return FileResponse(archive, media_type="application/zip", filename=f"{model}_bundle.zip")


async def put_statistic(
    image: str,
    body: dict,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    """``PUT /emlabel/stats?image=ID``: a structure's volume/area and/or clicked voxels.

    Body: ``{"structure": "lesion", "statistic": "volume_mm3", "value": 1234.5,
    "clicks_inside": [[x, y, z], ...], "clicks_outside": [...]}`` (voxel indices of the
    image file). Earlier values are kept in the structure's history.
    """
    datastore = app_instance().datastore()
    return http_errors(datastore.store_statistic)(
        image, body, source="api", user=getattr(user, "username", None)
    )


def install_request_guards() -> None:
    """Put the guards ahead of the stock routes (only inside a running server)."""
    module = sys.modules.get("monailabel.app")
    if module is None:
        return
    router = module.app.router
    if any(getattr(r, "name", "") == _INSTALLED_TAG for r in router.routes):
        return
    prefix = settings.MONAI_LABEL_API_STR
    guards = [
        APIRoute(f"{prefix}/train/{{model}}", guarded_train, methods=["POST"], name=_INSTALLED_TAG),
        APIRoute(
            f"{prefix}/scoring/{{method}}", guarded_scoring, methods=["POST"], name=_INSTALLED_TAG
        ),
        APIRoute(
            f"{prefix}/emlabel/bundle/{{model}}",
            export_bundle_zip,
            methods=["GET"],
            name=_INSTALLED_TAG,
            summary="Export a trained model as a MONAI bundle (zip)",
        ),
        APIRoute(
            f"{prefix}/emlabel/stats",
            put_statistic,
            methods=["PUT"],
            name=_INSTALLED_TAG,
            summary="Store a structure's volume/area and clicks for an image",
        ),
    ]
    for route in reversed(guards):
        router.routes.insert(0, route)
    logger.info("EMLabel request guards installed for /train and /scoring")
