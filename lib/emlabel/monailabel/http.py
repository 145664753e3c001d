"""Turning library errors into HTTP answers with a clear message."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from fastapi import HTTPException

from emlabel.errors import EMLabelError

P = ParamSpec("P")
R = TypeVar("R")


def to_http(error: EMLabelError) -> HTTPException:
    """The HTTPException a library error should become."""
    return HTTPException(status_code=error.status_code, detail=error.message)


def http_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate an adapter method so EMLabelError reaches the client as its 4xx status."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except EMLabelError as e:
            raise to_http(e) from e

    return wrapper
