"""Request guards in front of stock MONAI Label routes that start background processes.

``POST /train/{model}`` and ``POST /scoring/{method}`` hand the request to a subprocess
before the app sees it, so an unknown trainer or a bad option would fail there, unseen.
These guards run in the server process first and answer 404/400 with the reason; valid
requests go on to the stock handlers unchanged.
"""

from __future__ import annotations

import logging
import sys

from fastapi import Depends
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
    ]
    for route in reversed(guards):
        router.routes.insert(0, route)
    logger.info("EMLabel request guards installed for /train and /scoring")
