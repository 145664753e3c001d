"""The app's methods in one table: name, model file, infer task, trainer, scoring, inputs.

``apps/emlabel/main.py`` builds its tasks by looping over :data:`METHODS`; a new method is
one entry here (plus its learner or trainer in the library). A task is named by its class
(``module:Class``, imported when the app starts) and built with ``model_path`` (the
method's model file), ``settings`` and, for infer tasks and trainers, ``description``;
``inputs`` adds keyword arguments naming other methods' model files (AIDE reads the
``segmentation`` model to pseudo-label unlabeled images).
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

from emlabel.settings import AppSettings


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """A MONAI Label task class and how to build it."""

    cls: str
    """``module:Class``."""
    description: str | None = None
    inputs: tuple[tuple[str, str], ...] = ()
    """(keyword, method) pairs: the keyword gets that method's model file path."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """One method of the app and the MONAI Label tasks it serves."""

    name: str
    model_file: str
    infer: TaskSpec | None = None
    trainer: TaskSpec | None = None
    scoring: tuple[tuple[str, TaskSpec], ...] = ()
    """(scoring method name, task): scoring reads this method's model."""


def _task(cls: str, description: str | None = None, **inputs: str) -> TaskSpec:
    return TaskSpec(cls=cls, description=description, inputs=tuple(inputs.items()))


_M = "emlabel.monailabel."
# One line per method (read across): name, model file, infer, trainer, scoring.
# fmt: off
METHODS: tuple[MethodSpec, ...] = (
    MethodSpec(name="segmentation", model_file="segmentation.pt", infer=_task(_M + "infer:SegmentationInfer", "UNet segmentation (2D or 3D, as planned) of every structure in the label map"), trainer=_task(_M + "train:SegmentationTrainer", "Supervised training on the best available label of each image"), scoring=(("verifier", _task(_M + "verifier:VerifierScoring")),)),
    MethodSpec(name="aide", model_file="aide.pt", infer=_task(_M + "aide:AIDEInfer", "AIDE: mean of two cross-correcting UNets; reports their disagreement"), trainer=_task(_M + "aide:AIDETrainer3D", "AIDE: two networks correct noisy labels; corrections become versions", segmentation_model_path="segmentation")),
    MethodSpec(name="cgs", model_file="cgs.pt", infer=_task(_M + "cgs:CGSInfer", "CGS generalist head (a plain U-Net) trained with specialist heads"), trainer=_task(_M + "cgs:CGSTrainTask", "CGS: generalist + one specialist head per structure, semi-supervised"), scoring=(("ihed", _task(_M + "cgs:IHEDScoring")),)),
    MethodSpec(name="stats", model_file="stats.pt", infer=_task(_M + "infer:SegmentationInfer", "UNet learned from per-structure volumes and a few clicks"), trainer=_task(_M + "stats:StatsTrainTask", "Learn masks from per-structure volumes and a few clicked voxels")),
    MethodSpec(name="verifier", model_file="verifier.pt", trainer=_task(_M + "verifier:VerifierTrainTask", "Learned label verifier: small networks trained on corrupted human finals (no segmentation model needed)")),
    MethodSpec(name="em", model_file="em.pt", trainer=_task(_M + "em:EMTrainTask", "EM relabeling: verifier + expert correct labels, then retrain a learner")),  # em.pt: its train stats; it publishes its learner's model
)
# fmt: on
METHOD_BY_NAME: dict[str, MethodSpec] = {m.name: m for m in METHODS}


def build_task(
    spec: TaskSpec, method: MethodSpec, *, model_dir: Path, settings: AppSettings
) -> Any:
    """Import ``spec.cls`` and build it for ``method``."""
    module, _, name = spec.cls.partition(":")
    kwargs: dict[str, Any] = {
        "model_path": str(model_dir / method.model_file),
        "settings": settings,
    }
    if spec.description is not None:
        kwargs["description"] = spec.description
    for keyword, other in spec.inputs:
        kwargs[keyword] = str(model_dir / METHOD_BY_NAME[other].model_file)
    return getattr(importlib.import_module(module), name)(**kwargs)


def build_tasks(kind: str, *, model_dir: Path, settings: AppSettings) -> dict[str, Any]:
    """Every method's ``infer``, ``trainer`` or ``scoring`` tasks, by task name."""
    tasks: dict[str, Any] = {}
    for method in METHODS:
        specs = method.scoring if kind == "scoring" else ((method.name, getattr(method, kind)),)
        for name, spec in specs:
            if spec is not None:
                tasks[name] = build_task(spec, method, model_dir=model_dir, settings=settings)
    return tasks
