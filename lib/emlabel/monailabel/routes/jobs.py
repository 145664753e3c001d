"""Routes that start work in a subprocess: train, scoring, batch infer.

MONAI Label hands these requests to a subprocess before the app sees them, so an unknown
name or a bad option would fail there, unseen. These guards check names and options in
the server process first (404/400 with the reason), then call the stock handlers. Work
inside the request (``run_sync=true``) is refused for training and batch infer: it would
hold a server thread for the whole run.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from monailabel.endpoints import activelearning as stock_activelearning
from monailabel.endpoints import batch_infer as stock_batch
from monailabel.endpoints import scoring as stock_scoring
from monailabel.endpoints import train as stock_train
from monailabel.interfaces.utils.app import app_instance

from emlabel.errors import InvalidRequestError
from emlabel.monailabel.http import http_errors
from emlabel.monailabel.infer_options import check_infer_options
from emlabel.monailabel.routes.common import user_of
from emlabel.verify.score_cache import force_option

BATCH_KEYS = ("max_workers", "max_batch_size", "multi_gpu", "gpus")
"""Batch options besides the infer options (GPU choices are ignored: CPU)."""


def _refuse_sync(run_sync: bool | None, what: str) -> None:
    if run_sync:
        raise InvalidRequestError(
            f"run_sync is not allowed for {what}: it runs in the background; "
            f"poll GET /{'train' if what == 'training' else 'batch/infer'}/ for its status"
        )


@http_errors
def train_model(
    model: str,
    params: dict | None = None,
    run_sync: bool | None = False,
    enqueue: bool | None = False,
) -> Any:
    """``POST /train/{model}``: validate trainer and options, then start it."""
    _refuse_sync(run_sync, "training")
    app_instance().check_train_request(model, params)
    return stock_train.run_model(model, params, False, enqueue)


@http_errors
def train_all(params: dict | None = None, run_sync: bool | None = False) -> Any:
    """``POST /train/`` (stock: every trainer in turn): refused, name one trainer."""
    trainers = ", ".join(sorted(app_instance()._trainers))
    raise InvalidRequestError(f"name one trainer: POST /train/{{name}} with one of: {trainers}")


@http_errors
def run_scoring(method: str, params: dict | None = None, run_sync: bool | None = False) -> Any:
    """``POST /scoring/{method}``: validate the method name and option ``force``, then start it."""
    instance = app_instance()
    instance.check_name("scoring method", method, instance._scoring_methods)
    force_option(params or {})
    return stock_scoring.run_method(method, params, run_sync)


@http_errors
def run_batch_infer(
    model: str,
    images: stock_batch.BatchInferImageType | None = stock_batch.BatchInferImageType.IMAGES_ALL,
    params: dict | None = None,
    run_sync: bool | None = False,
) -> Any:
    """``POST /batch/infer/{model}``: outputs become pseudo-label versions, never finals."""
    _refuse_sync(run_sync, "batch infer")
    instance = app_instance()
    instance.check_name("model", model, instance._infers)
    params = dict(params or {})
    batch = {k: params.pop(k) for k in BATCH_KEYS if k in params}
    for key in ("max_workers", "max_batch_size"):
        if key in batch and (not isinstance(batch[key], int) or not 0 <= batch[key] <= 10_000):
            raise InvalidRequestError(f"batch option '{key}' must be a whole number 0..10000")
    params = check_infer_options(params) | {
        k: v for k, v in batch.items() if k in ("max_workers", "max_batch_size")
    }
    params.setdefault("device", "cpu")
    params.setdefault("multi_gpu", False)
    return stock_batch.run(model, images, params, False)


@http_errors
def next_sample(request: Request, strategy: str, params: dict | None = None) -> Any:
    """``POST /activelearning/{strategy}``: stock's handler, in the thread pool."""
    return stock_activelearning.sample(strategy, params, user_of(request))


ROUTES: dict[str, dict[str, Any]] = {
    "POST": {"/train/{model}": train_model, "/train/": train_all, "/scoring/{method}": run_scoring,
             "/batch/infer/{model}": run_batch_infer, "/activelearning/{strategy}": next_sample},
}  # fmt: skip
