"""Errors the library raises for bad input.

Each carries the HTTP status an adapter should answer with, so the server can turn a
library error into a clear 4xx without the library importing FastAPI.
"""

from __future__ import annotations


class EMLabelError(Exception):
    """Base class: a request or input EMLabel refuses, with a message saying why."""

    status_code: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(EMLabelError):
    """An image, label, model, trainer or strategy that does not exist."""

    status_code = 404


class InvalidRequestError(EMLabelError):
    """A request that is malformed or unsafe (e.g. a path leaving the studies folder)."""

    status_code = 400


class ConflictError(EMLabelError):
    """A request that would destroy or contradict stored data (e.g. delete a labeled image)."""

    status_code = 409


class InvalidLabelError(EMLabelError):
    """A label file that cannot be stored: unreadable, mismatched or with bad values."""

    status_code = 422


class SettingsError(EMLabelError):
    """A configuration key that is unknown or has a bad value."""

    status_code = 400


class UpstreamError(EMLabelError):
    """A server EMLabel relies on (the DICOMweb server) is unreachable or refused a request."""

    status_code = 502
