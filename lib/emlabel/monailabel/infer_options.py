"""The options a client may send with an infer request, checked once.

MONAI Label merges a request's ``params`` into the dict its infer pipeline runs on, so a
client could set internal keys (``result``, which the writer returns as the answer's
params and EMLabel stores as image info; ``image_path``; ``pred``) or values the pipeline
chokes on (a device that does not exist, an unknown dtype: 500s). Here every known option
is type-checked (400 naming it), internal keys are refused, and other keys (options of
models EMLabel does not serve, e.g. DeepEdit clicks) are dropped before the pipeline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from emlabel.errors import InvalidRequestError

logger = logging.getLogger(__name__)

LOGGING_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL"})
RESULT_DTYPES = frozenset({"uint8", "uint16", "int16", "int32", "float32"})
RESULT_EXTENSIONS = frozenset({".nii.gz", ".nii", ".nrrd", ".seg.nrrd"})
INTERNAL_KEYS = frozenset(
    {"result", "pred", "image_path", "session", "description", "latencies", "label", "model"}
)
MAX_TIMEOUT_S = 3600


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise ValueError
    return text in ("true", "1")


def _device(value: Any) -> str:
    text = str(value).strip().lower()
    if text == "cpu":
        return "cpu"
    if text.startswith("cuda"):  # viewers may ask for a GPU; this server may have none
        return text if torch.cuda.is_available() else "cpu"
    raise ValueError


def _choice(valid: frozenset[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in valid:
            raise ValueError
        return value

    return check


def _logging(value: Any) -> str:
    if str(value).upper() not in LOGGING_LEVELS:
        raise ValueError
    return str(value).upper()


def _timeout(value: Any) -> float:
    seconds = float(value)
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT_S:
        raise ValueError
    return seconds


def _text(value: Any) -> str | None:
    if value is None:  # MONAILabelClient sends "client_id": null
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise ValueError
    return value


def _image(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError
    return value


def _structured(value: Any) -> list | dict:
    if not isinstance(value, list | dict):
        raise ValueError
    return value


CHECKS: dict[str, Callable[[Any], Any]] = {
    "image": _image,
    "device": _device,
    "result_dtype": _choice(RESULT_DTYPES),
    "result_extension": _choice(RESULT_EXTENSIONS),
    "result_compress": _bool,
    "restore_label_idx": _bool,
    "largest_cc": _bool,
    "save_label": _bool,
    "label_tag": _text,
    "client_id": _text,
    "logging": _logging,
    "timeout": _timeout,
    "label_info": _structured,
}
"""Known options and their checks (each returns the typed value or raises ValueError)."""


def check_infer_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Typed known options; 400 for a bad value or an internal key; unknown keys dropped."""
    clean: dict[str, Any] = {}
    for key, value in options.items():
        if key in INTERNAL_KEYS or str(key).startswith("emlabel"):
            raise InvalidRequestError(f"infer option '{key}' is set by the server, not a client")
        check = CHECKS.get(key)
        if check is None:
            logger.info("infer option %r is not used by EMLabel's models; dropped", key)
            continue
        try:
            clean[key] = check(value)
        except (TypeError, ValueError) as e:
            raise InvalidRequestError(f"infer option '{key}' has a bad value {value!r}") from e
    return clean
