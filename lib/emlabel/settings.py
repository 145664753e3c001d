"""Typed application settings, parsed once from ``--conf`` values and a JSON config file.

MONAI Label hands an app its ``--conf key value`` pairs as strings. EMLabel converts them
here, once, into :class:`AppSettings`; the rest of the code only sees typed fields. An
unknown key or a bad value fails at start with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emlabel.errors import SettingsError

DEMO_LABELS: tuple[str, ...] = ("liver", "spleen", "kidney", "aorta", "adrenal", "lesion")

# Intensity normalisations (``normalisation``); see AppSettings.normalisation.
NORMALISATIONS: tuple[str, ...] = ("window", "ct", "zscore")

# Keys MONAI Label itself (or its stock clients) may pass in ``conf``; accepted and ignored.
MONAI_LABEL_KEYS: frozenset[str] = frozenset({"server_mode", "preload", "models"})

# The ``--conf`` key that names a JSON file of settings (``--conf`` values override it).
CONFIG_FILE_KEY = "config"

# Longest token lifetime (``auth_token_minutes``): 30 days.
MAX_TOKEN_MINUTES = 30 * 24 * 60
# Largest body cap (``max_upload_mb``): 1 TiB.
MAX_UPLOAD_MB = 1 << 20
# Largest ``min_steps_per_epoch``.
MAX_STEPS_PER_EPOCH = 10_000
# A browser origin: scheme, host and optional port, nothing else ("*" is not an origin).
_ORIGIN = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:[0-9]{1,5})?/?")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AppSettings:
    """Every setting of the EMLabel app, with its default (see ``sample-config.json``)."""

    labels: tuple[str, ...] = DEMO_LABELS
    """Foreground structure names. Given as a JSON object ``{"liver": 5, ...}`` the values
    are the ones stored in the label files (see ``label_values``)."""
    label_values: tuple[int, ...] = ()
    """Value stored in the label files for each structure of ``labels``; empty = 1, 2, ...
    (values not listed are read as background)."""
    spatial_dims: int = 3
    """2 for images (X-ray, ultrasound, slices), 3 for volumes (CT, MR)."""
    in_channels: int = 1
    """Image channels the network reads: 1 (grey; RGB files with equal channels are read
    grey) or 3 (true colour)."""
    modality: str = "CT"
    """What the images are (informational; ``emlabel plan`` picks ``normalisation`` by it)."""
    normalisation: str = "window"
    """``window``: ``intensity_window`` mapped to [0, 1]; ``ct``: clip to ``intensity_window``
    then (x - mean) / std with ``intensity_stats``; ``zscore``: per image (x - mean) / std."""
    intensity_stats: tuple[float, ...] = ()
    """(mean, std) of the ``ct`` normalisation (the planned foreground statistics)."""
    target_spacing: tuple[float, ...] = (1.6, 1.6, 2.5)
    """Voxel spacing (mm) images are resampled to before the network sees them."""
    intensity_window: tuple[float, ...] = (-200.0, 300.0)
    """Intensity range: mapped to [0, 1] (``window``) or clipped to (``ct``)."""
    roi_size: tuple[int, ...] = (64, 64, 48)
    """Training patch and sliding-window size, in voxels at ``target_spacing``."""
    network_channels: tuple[int, ...] = (16, 32, 64, 128)
    """UNet feature channels per level (each level halves the resolution)."""
    num_res_units: int = 1
    """Residual units per UNet block."""
    max_epochs: int = 50
    """Training epochs of the ``segmentation`` trainer."""
    train_batch_size: int = 2
    """Volumes per training batch."""
    min_steps_per_epoch: int = 0
    """Fewest optimizer steps per ``segmentation`` epoch: a small labeled set is sampled with
    replacement up to this (nnU-Net fixes 250 per epoch); 0 = one pass over the data."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    val_fraction: float = 0.2
    """Fraction of labeled images held out for validation (at least one when possible)."""
    seed: int = 0
    """Seed for data splits, weight initialisation and augmentation."""
    affine_tolerance: float = 1e-2
    """Largest difference (mm, per affine entry) between a label's and its image's geometry."""
    sw_overlap: float = 0.25
    """Sliding-window inference overlap."""
    num_threads: int = 0
    """Torch CPU threads for training and inference (0 = torch's default)."""
    review_budget: float = 0.05
    """Fraction of labeled images the ``verifier`` strategy may send to a human per EM iteration."""
    review_random_share: float = 0.2
    """Share of the reviews drawn at random among the unreviewed labels (the unbiased sample
    the operating point and the remaining-errors estimate are fitted on)."""
    review_wrong_dice: float = 0.9
    """A reviewed machine label counts as wrong when Dice(it, the human final) is below this."""
    target_sensitivity: float = 0.95
    """ROC operating point: the verifier threshold must catch this fraction of bad labels."""
    cgs_channels: tuple[int, ...] = (8, 16, 32, 64, 128)
    """Encoder widths of the CGS U-Net (five levels; inputs padded to multiples of 16)."""
    cgs_feature_channels: int = 16
    """Width of the last decoder feature shared by the CGS generalist and specialist heads."""
    bundles: tuple[str, ...] = ()
    """MONAI bundle folders to serve as extra infer tasks (named after the folder)."""
    auth_users: str = ""
    """Users file (JSON, or YAML with pyyaml) with password hashes and roles; empty = auth off."""
    auth_secret_file: str = ""
    """File holding the token signing secret; empty = ``<app_dir>/model/.auth-secret``."""
    auth_token_minutes: int = 480
    """Lifetime of a bearer token from ``POST /auth/token``, in minutes."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins (``scheme://host[:port]``) allowed to call the API with credentials."""
    max_upload_mb: int = 1024
    """Largest request body (MB); a larger request is answered 413 before it is read."""

    @property
    def num_classes(self) -> int:
        """Output channels of a segmentation network: background + structures."""
        return len(self.labels) + 1

    @property
    def label_map(self) -> dict[str, int]:
        """Structure name -> class index (1, 2, ...; the network's channel; background 0)."""
        return {name: i + 1 for i, name in enumerate(self.labels)}

    @property
    def stored_values(self) -> tuple[int, ...]:
        """The value each structure has in the label files (``label_values`` or 1, 2, ...)."""
        return self.label_values or tuple(range(1, len(self.labels) + 1))

    @property
    def stored_label_map(self) -> dict[str, int]:
        """Structure name -> the value label files store for it."""
        return dict(zip(self.labels, self.stored_values, strict=True))

    @property
    def maps_label_values(self) -> bool:
        """True when stored label values differ from class indices (files are remapped)."""
        return self.stored_values != tuple(range(1, len(self.labels) + 1))

    def validate(self) -> None:
        """Check value ranges that types alone do not express."""
        checks = {
            "labels": len(self.labels) > 0 and len(set(self.labels)) == len(self.labels),
            "label_values": not self.label_values
            or (
                len(self.label_values) == len(self.labels)
                and len(set(self.label_values)) == len(self.label_values)
                and min(self.label_values) >= 1
            ),
            "spatial_dims": self.spatial_dims in (2, 3),
            "in_channels": self.in_channels in (1, 3),
            "normalisation": self.normalisation in NORMALISATIONS,
            "intensity_stats": (len(self.intensity_stats) == 2 and self.intensity_stats[1] > 0)
            if self.normalisation == "ct"
            else len(self.intensity_stats) in (0, 2),
            "target_spacing": len(self.target_spacing) == self.spatial_dims
            and min(self.target_spacing) > 0,
            "intensity_window": len(self.intensity_window) == 2
            and self.intensity_window[0] < self.intensity_window[1],
            "roi_size": len(self.roi_size) == self.spatial_dims and min(self.roi_size) >= 16,
            "network_channels": len(self.network_channels) >= 2 and min(self.network_channels) > 0,
            "num_res_units": self.num_res_units >= 0,
            "max_epochs": self.max_epochs >= 1,
            "train_batch_size": self.train_batch_size >= 1,
            "min_steps_per_epoch": 0 <= self.min_steps_per_epoch <= MAX_STEPS_PER_EPOCH,
            "learning_rate": self.learning_rate > 0,
            "val_fraction": 0 <= self.val_fraction < 1,
            "affine_tolerance": self.affine_tolerance >= 0,
            "sw_overlap": 0 <= self.sw_overlap < 1,
            "num_threads": self.num_threads >= 0,
            "review_budget": 0 <= self.review_budget <= 1,
            "review_random_share": 0 <= self.review_random_share <= 1,
            "review_wrong_dice": 0 < self.review_wrong_dice <= 1,
            "target_sensitivity": 0 < self.target_sensitivity <= 1,
            "cgs_channels": len(self.cgs_channels) == 5 and min(self.cgs_channels) > 0,
            "cgs_feature_channels": self.cgs_feature_channels > 0,
            "auth_token_minutes": 1 <= self.auth_token_minutes <= MAX_TOKEN_MINUTES,
            "cors_origins": all(_ORIGIN.fullmatch(o) for o in self.cors_origins),
            "max_upload_mb": 1 <= self.max_upload_mb <= MAX_UPLOAD_MB,
        }
        for key, ok in checks.items():
            if not ok:
                raise SettingsError(f"setting '{key}' has an invalid value: {getattr(self, key)!r}")


def settings_to_dict(settings: AppSettings) -> dict[str, Any]:
    """JSON-able dict that :func:`parse_settings` turns back into the same settings."""
    return {
        f.name: list(value) if isinstance(value := getattr(settings, f.name), tuple) else value
        for f in dataclasses.fields(AppSettings)
    }


def setting_names() -> list[str]:
    """Names of every setting, in declaration order."""
    return [f.name for f in dataclasses.fields(AppSettings)]


def parse_settings(
    conf: Mapping[str, Any] | None = None,
    *,
    base_dir: Path | None = None,
    planned: Mapping[str, Any] | None = None,
) -> AppSettings:
    """Build :class:`AppSettings` from ``conf`` (strings or JSON values).

    ``conf[CONFIG_FILE_KEY]`` may name a JSON file of settings; the other ``conf``
    entries override it, and both override ``planned`` (the data's plan,
    :mod:`emlabel.planning`), which overrides the defaults. Raises
    :class:`SettingsError` naming the offending key.
    """
    conf = dict(conf or {})
    given: dict[str, Any] = {}
    config_file = conf.pop(CONFIG_FILE_KEY, None)
    if config_file:
        given.update(read_config_file(Path(config_file), base_dir=base_dir))
    given.update({k: v for k, v in conf.items() if k not in MONAI_LABEL_KEYS})
    given = _split_label_map(given)
    values = _split_label_map(dict(planned or {}))
    if "labels" in given:  # the user's structures replace the planned ones and their values
        values.pop("label_values", None)
    values.update(given)
    hints = typing.get_type_hints(AppSettings)
    known = setting_names()
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in hints or key not in known:
            raise SettingsError(f"unknown setting '{key}'; valid settings: {', '.join(known)}")
        kwargs[key] = _convert(key, raw, hints[key])
    settings = AppSettings(**kwargs)
    settings.validate()
    return settings


def _split_label_map(values: dict[str, Any]) -> dict[str, Any]:
    """``labels`` given as ``{"liver": 5, ...}`` (or its JSON text) -> ``labels`` + ``label_values``."""
    raw = values.get("labels")
    if isinstance(raw, str) and raw.strip().startswith("{"):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SettingsError(f"setting 'labels' is not a valid JSON object: {e}") from e
    if not isinstance(raw, dict):
        return values
    if "label_values" in values:
        raise SettingsError("give 'labels' as a name -> value object or 'label_values', not both")
    names, stored = [], []
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise SettingsError(f"setting 'labels': the value of {name!r} must be an integer")
        try:
            stored.append(int(value))
        except ValueError as e:
            raise SettingsError(
                f"setting 'labels': the value of {name!r} must be an integer"
            ) from e
        names.append(str(name))
    return values | {"labels": names, "label_values": stored}


def read_config_file(path: Path, *, base_dir: Path | None = None) -> dict[str, Any]:
    """Read a JSON settings file; keys starting with ``_`` are comments."""
    if not path.is_absolute() and base_dir is not None and not path.exists():
        path = base_dir / path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SettingsError(f"setting '{CONFIG_FILE_KEY}': file not found: {path}") from e
    except json.JSONDecodeError as e:
        raise SettingsError(f"setting '{CONFIG_FILE_KEY}': {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise SettingsError(f"setting '{CONFIG_FILE_KEY}': {path} must hold a JSON object")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _convert(key: str, raw: Any, hint: Any) -> Any:
    """Convert one raw value (string from ``--conf`` or JSON value) to the field's type."""
    try:
        origin = typing.get_origin(hint)
        if origin is tuple:
            item_type = typing.get_args(hint)[0]
            items = _as_list(raw)
            return tuple(_scalar(item, item_type) for item in items)
        if origin in (typing.Union, types.UnionType):
            raise TypeError("union settings are not supported")
        if hint is str:
            # A top-level text setting may be empty (e.g. auth_users: "" = auth off).
            if not isinstance(raw, str):
                raise TypeError(f"expected a string, got {type(raw).__name__}")
            return raw.strip()
        return _scalar(raw, hint)
    except (TypeError, ValueError) as e:
        raise SettingsError(f"setting '{key}' has a bad value {raw!r}: {e}") from e


def _as_list(raw: Any) -> list[Any]:
    if isinstance(raw, list | tuple):
        return list(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            parsed = json.loads(text)
            if not isinstance(parsed, list):
                raise ValueError("expected a list")
            return parsed
        return [part.strip() for part in text.split(",") if part.strip()]
    raise TypeError(f"expected a list or comma-separated string, got {type(raw).__name__}")


def _scalar(raw: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if kind is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError("expected an integer")
        return int(str(raw).strip()) if isinstance(raw, str) else int(raw)
    if kind is float:
        if isinstance(raw, bool):
            raise ValueError("expected a number")
        return float(raw)
    if kind is str:
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError("expected a non-empty string")
        return raw.strip()
    raise TypeError(f"unsupported setting type {kind}")
