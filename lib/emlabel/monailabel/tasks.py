"""Shared bases of EMLabel's MONAI Label tasks: typed request options, stats file, infer chain."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.inferers import Inferer, SlidingWindowInferer
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.writer import Writer

from emlabel.atomic import atomic_write_json
from emlabel.errors import EMLabelError, InvalidRequestError
from emlabel.settings import AppSettings
from emlabel.transforms import inference_postprocessing, load_and_normalise

# Request keys MONAI Label or its clients add to every train request; not options.
REQUEST_PASSTHROUGH = frozenset(
    {"model", "local_rank", "device", "bundle_path", "client_id", "name", "multi_gpu", "gpus"}
)
PRE_TRANSFORMS_KEY = "emlabel_pre_transforms"


def parse_options(
    request: dict[str, Any], defaults: Any, allowed: Sequence[str], *, what: str
) -> Any:
    """``defaults`` (a frozen dataclass) with the request's ``allowed`` keys applied, typed.

    Unknown keys, bad values and values above their maximum (``emlabel.bounds``; only the
    keys the request set, so configured defaults are not judged) or not finite raise
    InvalidRequestError (a 400 naming the key).
    """
    from emlabel.bounds import check_maxima

    overrides = {k: v for k, v in request.items() if k not in REQUEST_PASSTHROUGH}
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise InvalidRequestError(
            f"unknown {what} option(s) {unknown}; valid: {', '.join(allowed)}"
        )
    hints = typing.get_type_hints(type(defaults))
    values = {}
    for key, raw in overrides.items():
        values[key] = _convert(key, raw, hints[key], what)
    options = dataclasses.replace(defaults, **values)
    check_maxima(options, what, values)
    validate = getattr(options, "validate", None)
    if validate is not None:
        try:
            validate()
        except (ValueError, EMLabelError) as e:
            raise InvalidRequestError(f"bad {what} option: {e}") from e
    return options


def _convert(key: str, raw: Any, kind: Any, what: str) -> Any:
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            return {"true": True, "false": False}[str(raw).strip().lower()]
        if kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        return raw
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidRequestError(f"{what} option '{key}' has a bad value {raw!r}") from e


class StatsFileTrainTask(TrainTask):
    """A TrainTask whose stats live in ``<model>.train_stats.json`` (shown in /info)."""

    def __init__(self, description: str, model_path: str | Path) -> None:
        super().__init__(description)
        self.model_path = Path(model_path)
        self.stats_path = self.model_path.with_suffix(".train_stats.json")

    def stats(self) -> dict[str, Any]:
        """The stats file; ``RUNNING`` of a process that died shows as ``ABORTED``."""
        from emlabel.monailabel.runs import stats_writer_dead

        if not self.stats_path.exists():
            return {}
        try:
            stats = json.loads(self.stats_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {}
        if isinstance(stats, dict) and stats_writer_dead(stats):
            reason = f"the training process (pid {stats.get('pid')}) ended without finishing"
            return stats | {"state": "ABORTED", "reason": reason}
        return stats

    def write_stats(self, stats: dict[str, Any], *, run: Any = None) -> dict[str, Any]:
        """Store the train stats atomically; NaN/inf become null (``/info`` must stay JSON).

        Records the writing process (``pid``, ``process_started``, ``host``) so recovery can
        mark the stats of a killed training ``ABORTED``. With ``run`` (a
        :class:`~emlabel.monailabel.runs.MethodRun`) the stats are staged and appear when
        the run commits, together with its model and label versions. Under torchrun only
        rank 0 writes.
        """
        from emlabel.distributed import world
        from emlabel.monailabel.runs import process_fields

        stats = json_safe(stats | process_fields())
        if not world().main:
            return stats
        if run is not None:
            run.stage_json(self.stats_path, stats)
        else:
            atomic_write_json(stats, self.stats_path)
        return stats


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class OptionsTrainTask(StatsFileTrainTask):
    """A trainer whose requests may override some typed options (``REQUEST_KEYS``).

    Subclasses set ``REQUEST_KEYS`` and ``OPTION_NAME`` and build their default options
    from the app settings in :meth:`default_options`; ``config()`` shows the defaults to
    clients and ``parse_request`` gives the typed options of one run (400 on bad input).
    """

    REQUEST_KEYS: tuple[str, ...] = ()
    OPTION_NAME = "train"
    #: True when it runs under torchrun: DistributedDataParallel, per-image work sharded,
    #: rank 0 writing (:mod:`emlabel.distributed`); the CLI refuses the others there.
    DISTRIBUTED: bool = False

    def __init__(self, *, model_path: str, settings: AppSettings, description: str) -> None:
        super().__init__(description, model_path)
        self._settings = settings
        self._defaults = self.default_options(settings)

    def default_options(self, settings: AppSettings) -> Any:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {k: getattr(self._defaults, k) for k in self.REQUEST_KEYS}

    def parse_request(self, request: dict[str, Any]) -> Any:
        """Typed options for one run: defaults overridden by the request's allowed keys."""
        return parse_options(request, self._defaults, self.REQUEST_KEYS, what=self.OPTION_NAME)


def _orthogonal(affine: Any) -> bool:
    """True when the affine's axes are mutually orthogonal (no shear)."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    gram = linear.T @ linear
    return bool(np.allclose(gram, np.diag(np.diag(gram)), atol=1e-6 * float(np.max(gram))))


def run_chain_hiding_image_path(data: dict[str, Any], compose: mt.Compose) -> dict[str, Any]:
    """Run ``compose`` on ``data`` without the ``image_path`` string MONAI Label adds.

    MONAI 1.6's Spacingd calls ``.update()`` on every ``image_*`` key, which fails on that
    string; it is hidden while the chain runs and put back for MONAI Label's writer.
    """
    image_path = data.pop("image_path", None)
    data = compose(data)
    if image_path is not None:
        data["image_path"] = image_path
    return data


class VolumeInferTask(BasicInferTask):
    """Sliding-window 3D segmentation with the app's preprocessing, restored exactly.

    Pre-transforms run as one Compose that Invertd then undoes (the same chain an exported
    bundle uses). Subclasses give the network and may add post-transforms before the
    shared ones (:meth:`extra_post_transforms`).
    """

    def __init__(
        self,
        *,
        model_path: str,
        network: torch.nn.Module,
        settings: AppSettings,
        description: str,
    ) -> None:
        self._settings = settings
        super().__init__(
            path=model_path,
            network=network,
            type=InferType.SEGMENTATION,
            labels=list(settings.labels),
            dimension=settings.spatial_dims,
            description=description,
            roi_size=settings.roi_size,
            config={"device": "cpu", "result_dtype": "uint8"},
        )

    def is_trained(self) -> bool:
        """True once a trained model file exists; the app refuses infer (409) before that."""
        return self.get_path(validate=True) is not None

    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        return load_and_normalise(self._settings, ("image",))

    def run_pre_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> Any:
        compose = mt.Compose(list(transforms))
        data = run_chain_hiding_image_path(data, compose)
        data[PRE_TRANSFORMS_KEY] = compose
        return data

    def inferer(self, data: Any = None) -> Inferer:
        return SlidingWindowInferer(
            roi_size=self._settings.roi_size, sw_batch_size=1, overlap=self._settings.sw_overlap
        )

    def extra_post_transforms(self) -> list[Callable]:
        return []

    def writer(self, data: dict[str, Any], extension: Any = None, dtype: Any = None) -> Any:
        """MONAI Label's writer, NIfTI through nibabel when the affine is orthogonal.

        Its default, ITK, gzips a 458x379x336 label in 4.6 s; nibabel (MONAI's
        ``NibabelWriter``) in 1.8 s, same voxels and affine. MONAI Label prefers ITK for
        sheared affines (Slicer reads nibabel's differently), so those keep ITK.
        """
        label = data.get(self.output_label_key)
        path = str(data.get("image_path") or "")
        affine = getattr(label, "affine", None)
        if path.endswith((".nii", ".nii.gz")) and affine is not None and _orthogonal(affine):
            data["result_extension"] = extension or data.get("result_extension")
            data["result_dtype"] = dtype or data.get("result_dtype")
            data["labels"] = self.labels
            return Writer(label=self.output_label_key, json=self.output_json_key, nibabel=True)(
                data
            )
        return super().writer(data, extension=extension, dtype=dtype)

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return [
            mt.EnsureTyped(keys="pred", device="cpu"),
            *self.extra_post_transforms(),
            *inference_postprocessing(data[PRE_TRANSFORMS_KEY], self._settings),
            mt.SqueezeDimd(keys="pred", dim=0),
        ]  # pred stays a MetaTensor: MONAI Label's writer takes the affine from it
