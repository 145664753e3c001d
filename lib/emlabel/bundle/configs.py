"""``configs/inference.json`` of an exported bundle, in MONAI's bundle config syntax.

The chain mirrors the server's infer tasks (same preprocessing, sliding window, argmax,
MONAI's nearest-neighbour inverse of the preprocessing), so ``python -m monai.bundle run`` gives the
same labels as the server. Only MONAI components are referenced at run time: the bundle
runs where MONAI is installed, without EMLabel. Networks that MONAI lacks (the AIDE
ensemble) are run from the bundle's TorchScript file, which ``ckpt_export`` made from
EMLabel's class at export time.
"""

from __future__ import annotations

from typing import Any

from emlabel.settings import AppSettings


def unet_network_def(settings: AppSettings) -> dict[str, Any]:
    """MONAI UNet as the ``segmentation`` trainer builds it (see emlabel.nets.build_unet)."""
    channels = list(settings.network_channels)
    return {
        "_target_": "UNet",
        "spatial_dims": settings.spatial_dims,
        "in_channels": settings.in_channels,
        "out_channels": settings.num_classes,
        "channels": channels,
        "strides": [2] * (len(channels) - 1),
        "num_res_units": settings.num_res_units,
    }


def basic_unet_network_def(settings: AppSettings) -> dict[str, Any]:
    """MONAI BasicUNet as infer ``cgs`` serves it (the CGS generalist path only)."""
    return {
        "_target_": "BasicUNet",
        "spatial_dims": settings.spatial_dims,
        "in_channels": settings.in_channels,
        "out_channels": settings.num_classes,
        "features": [*settings.cgs_channels, settings.cgs_feature_channels],
        "act": ["LeakyReLU", {"negative_slope": 0.01, "inplace": True}],
        "norm": ["batch", {}],
        "dropout": 0.0,
    }


TORCHSCRIPT_NETWORK = "$torch.jit.load(@bundle_root + '/models/model.ts', map_location='cpu')"


def aide_export_def(settings: AppSettings) -> dict[str, Any]:
    """What ``ckpt_export`` scripts for an AIDE model: both UNets, mean softmax (as log)."""
    return {
        "_target_": "emlabel.nets.ensemble.LogMeanSoftmaxEnsemble",
        "f1": unet_network_def(settings),
        "f2": unet_network_def(settings),
    }


# emlabel.data.channels.planned_channels as a bundle expression (MONAI's Lambdad).
_CHANNEL_EXPRESSIONS = {
    1: "$lambda x: x[:3].mean(dim=0, keepdim=True) if x.shape[0] > 1 else x",
    3: "$lambda x: x.repeat(3, *[1] * (x.ndim - 1)) if x.shape[0] == 1 else x[:3]",
}


def intensity_step(settings: AppSettings) -> dict[str, Any]:
    """:func:`emlabel.transforms.intensity_normalisation` in bundle syntax."""
    low, high = settings.intensity_window
    if settings.normalisation == "zscore":
        return {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True}
    b_min, b_max = 0.0, 1.0
    if settings.normalisation == "ct":
        mean, std = settings.intensity_stats
        b_min, b_max = (low - mean) / std, (high - mean) / std
    return {
        "_target_": "ScaleIntensityRanged",
        "keys": "image",
        "a_min": low,
        "a_max": high,
        "b_min": b_min,
        "b_max": b_max,
        "clip": True,
    }


def preprocessing(settings: AppSettings) -> list[dict[str, Any]]:
    """Same steps as :func:`emlabel.transforms.load_and_normalise` for the image key."""
    return [
        {"_target_": "LoadImaged", "keys": "image", "image_only": False},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {
            "_target_": "Lambdad",
            "keys": "image",
            "func": _CHANNEL_EXPRESSIONS[settings.in_channels],
        },
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"[: settings.spatial_dims]},
        {
            "_target_": "Spacingd",
            "keys": "image",
            "pixdim": list(settings.target_spacing),
            "mode": "bilinear",
        },
        intensity_step(settings),
        {"_target_": "EnsureTyped", "keys": "image"},
    ]


def postprocessing(settings: AppSettings) -> list[dict[str, Any]]:
    """Same steps as :func:`emlabel.transforms.inference_postprocessing`, then save."""
    steps: list[dict[str, Any]] = [
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "image",
            "nearest_interp": True,
            "to_tensor": True,
        },
    ]
    if settings.maps_label_values:
        steps.append(
            {
                "_target_": "MapLabelValued",
                "keys": "pred",
                "orig_labels": list(range(1, len(settings.labels) + 1)),
                "target_labels": list(settings.stored_values),
            }
        )
    return [
        *steps,
        {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_postfix": "seg",
            "output_ext": ".png" if settings.spatial_dims == 2 else ".nii.gz",
            "output_dtype": "$numpy.uint8",
            "resample": False,
            "scale": None,
            "separate_folder": False,
            "print_log": False,
        },
    ]


# File types the bundle's datalist picks up from --dataset_dir.
BUNDLE_INPUT_PATTERNS: tuple[str, ...] = (
    "*.nii.gz", "*.nii", "*.nrrd", "*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff",
)  # fmt: skip


def inference_config(settings: AppSettings, network_def: dict[str, Any]) -> dict[str, Any]:
    """The whole inference.json: run it with ``--dataset_dir DIR --output_dir OUT``."""
    return {
        "imports": ["$import glob", "$import os", "$import numpy"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$sorted(sum((glob.glob(os.path.join(@dataset_dir, p)) for p in "
        f"{list(BUNDLE_INPUT_PATTERNS)!r}), []))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing(settings)},
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': i} for i in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(settings.roi_size),
            "sw_batch_size": 1,
            "overlap": settings.sw_overlap,
        },
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing(settings)},
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@bundle_root + '/models/model.pt'",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            },
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "initialize": [],
        "run": ["$@evaluator.run()"],
    }
