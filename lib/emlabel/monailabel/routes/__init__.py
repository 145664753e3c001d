"""EMLabel's routes, put ahead of MONAI Label's stock routes of the same paths.

Each module's ``ROUTES`` maps method -> path -> handler; :func:`install_request_guards`
turns them into FastAPI routes at the front of the running server's router, so they
answer first. Handlers are plain functions (FastAPI runs them in its thread pool, never
on the event loop) that turn EMLabel's errors into their 4xx status.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from fastapi.routing import APIRoute
from monailabel.config import settings

from emlabel.monailabel.routes import datastore, extras, infer, jobs, models

logger = logging.getLogger(__name__)

INSTALLED_TAG = "emlabel_route"
MODULES = (datastore, infer, models, jobs, extras)


def summary(handler: Any) -> str:
    """The first line of a handler's docstring (the route's summary in the API explorer)."""
    doc = (getattr(handler, "__doc__", None) or "").strip()
    first = doc.splitlines()[0] if doc else ""
    if first.startswith("``") and ": " in first:  # "``PUT /path``: what it does"
        first = first.split(": ", 1)[1]
    return first[:1].upper() + first[1:]


def emlabel_routes() -> list[APIRoute]:
    """Every EMLabel route, in the order they are matched."""
    prefix = settings.MONAI_LABEL_API_STR
    return [
        APIRoute(prefix + path, handler, methods=[method], name=INSTALLED_TAG,
                 summary=summary(handler), tags=["EMLabel"])
        for module in MODULES
        for method, paths in module.ROUTES.items()
        for path, handler in paths.items()
    ]  # fmt: skip


def install_request_guards() -> None:
    """Put EMLabel's routes ahead of the stock routes (only inside a running server)."""
    module = sys.modules.get("monailabel.app")
    if module is None:
        return
    router = module.app.router
    if any(getattr(r, "name", "") == INSTALLED_TAG for r in router.routes):
        return
    for route in reversed(emlabel_routes()):
        router.routes.insert(0, route)
    module.app.openapi_schema = None  # rebuilt with EMLabel's routes on the next request
    logger.info("EMLabel routes installed ahead of the stock routes")
