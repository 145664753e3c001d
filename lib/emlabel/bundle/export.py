"""Write a MONAI bundle from an EMLabel checkpoint, verified, atomically.

The bundle is assembled in a temporary folder beside ``out_dir`` and renamed into place
only after ``verify_metadata`` (against the local schema) and ``ckpt_export`` succeeded, so
a failed export leaves nothing behind and never a half-written bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from emlabel.bundle.configs import (
    TORCHSCRIPT_NETWORK,
    aide_export_def,
    basic_unet_network_def,
    inference_config,
    unet_network_def,
)
from emlabel.bundle.metadata import build_metadata
from emlabel.bundle.schema import find_schema, verify_metadata_file
from emlabel.checkpoints import load_checkpoint
from emlabel.errors import EMLabelError
from emlabel.settings import AppSettings, parse_settings


class BundleError(EMLabelError):
    """The bundle cannot be exported (missing model, invalid metadata, ...)."""


# method -> (network_def in inference.json, definition ckpt_export scripts into model.ts).
# A MONAI network is its own export definition; others run from the TorchScript file.
NETWORK_DEFS: dict[str, Any] = {
    "segmentation": lambda s: (unet_network_def(s), unet_network_def(s)),
    "aide": lambda s: (TORCHSCRIPT_NETWORK, aide_export_def(s)),
    "cgs": lambda s: (basic_unet_network_def(s), basic_unet_network_def(s)),
    "stats": lambda s: (unet_network_def(s), unet_network_def(s)),
}
DESCRIPTIONS = {
    "segmentation": "3D UNet trained by EMLabel on the best available label of each image "
    "(human final > verified > corrected > imported).",
    "stats": "3D UNet trained by EMLabel from per-structure volumes and a few clicked voxels "
    "(summary statistics + weak supervision), alongside any full labels.",
    "cgs": "Generalist head of a CGS model trained by EMLabel (mean teacher with one specialist "
    "head per structure during training; the served network is a plain 3D U-Net).",
    "aide": "AIDE ensemble trained by EMLabel: two 3D UNets that corrected each other's noisy "
    "labels; the prediction is the mean of both networks' softmax.",
}


def export_bundle(
    *,
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    schema: str | os.PathLike[str] | None = None,
    version: str = "0.1.0",
    overwrite: bool = False,
) -> Path:
    """Export ``checkpoint`` (an EMLabel model file) as a bundle folder ``out_dir``."""
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir)
    if not checkpoint.is_file():
        raise BundleError(f"no trained model at {checkpoint}; train it first")
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} already exists; choose another --out or pass --overwrite")
    state_dict, meta = load_checkpoint(checkpoint)
    method = meta.get("method", "segmentation")
    if method not in NETWORK_DEFS:
        raise BundleError(f"cannot export models of method '{method}' yet")
    settings = _settings_of(meta)
    schema_path = find_schema(schema)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write_bundle(staging, state_dict, meta, settings, method, version)
        try:
            verify_metadata_file(staging / "configs" / "metadata.json", schema_path)
        except ValueError as e:
            raise BundleError(f"metadata.json does not match the MONAI schema: {e}") from e
        _export_torchscript(staging, NETWORK_DEFS[method](settings)[1])
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _settings_of(meta: dict[str, Any]) -> AppSettings:
    if "settings" not in meta:
        raise BundleError(
            "the checkpoint carries no settings; retrain it with this EMLabel version"
        )
    return parse_settings(meta["settings"])


def _write_bundle(
    root: Path,
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any],
    settings: AppSettings,
    method: str,
    version: str,
) -> None:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "docs").mkdir()
    network_def, _ = NETWORK_DEFS[method](settings)
    provenance = {k: v for k, v in meta.items() if k not in ("settings",)}
    provenance["settings"] = meta["settings"]
    best = meta.get("best_val_dice")
    metadata = build_metadata(
        settings=settings,
        method=method,
        version=version,
        description=DESCRIPTIONS[method],
        provenance=provenance,
        eval_metrics={"val_mean_dice": float(best)} if best is not None else {},
    )
    (root / "configs" / "metadata.json").write_text(
        json.dumps(metadata, indent=2), encoding="utf-8"
    )
    config = inference_config(settings, network_def)
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    torch.save(state_dict, root / "models" / "model.pt")
    (root / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")
    (root / "docs" / "README.md").write_text(_readme(metadata, settings), encoding="utf-8")


def _export_torchscript(root: Path, export_def: dict[str, Any]) -> None:
    """``models/model.ts`` with MONAI's ``ckpt_export`` (configs embedded in the file)."""
    from monai.bundle import ckpt_export

    ckpt_export(
        net_id="emlabel_export_network",
        emlabel_export_network=export_def,
        filepath=str(root / "models" / "model.ts"),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=str(root / "configs" / "inference.json"),
        bundle_root=str(root),
    )


def _readme(metadata: dict[str, Any], settings: AppSettings) -> str:
    em = metadata["emlabel"]
    sources = ", ".join(f"{k}: {v}" for k, v in (em.get("label_sources") or {}).items())
    return f"""# {metadata["task"]}

{metadata["description"]}

Exported by EMLabel {em["emlabel_version"]} (method `{em["method"]}`).

## Labels
{chr(10).join(f"- {k}: {v}" for k, v in metadata["network_data_format"]["outputs"]["pred"]["channel_def"].items())}

## Run
    python -m monai.bundle run --config_file configs/inference.json \\
        --bundle_root . --dataset_dir /path/to/images --output_dir /path/to/output

Images are resampled to {list(settings.target_spacing)} mm, windowed to
{list(settings.intensity_window)} HU, segmented with a sliding window of
{list(settings.roi_size)} voxels, and the labels are written on each input image's grid as
`<name>_seg.nii.gz`. `models/model.ts` is the same network in TorchScript.

## Training data and provenance
- training labels by kind: {sources or "unknown"}
- best validation mean Dice: {em.get("best_val_dice")}
- trained at: {em.get("trained_at")}

The full provenance is in `configs/metadata.json` under `emlabel`.

## Intended use
{metadata["intended_use"]}.
"""


LICENSE_TEXT = """The model weights and configuration files in this bundle were produced with EMLabel
by the users of the EMLabel server that trained them, on their own images and labels.

The configuration files are provided under the Apache License, Version 2.0
(https://www.apache.org/licenses/LICENSE-2.0). The terms of use of the model weights follow
the terms of the data they were trained on; ask the team that trained the model.
"""
