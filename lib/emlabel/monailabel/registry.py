"""The app's methods in one table: name, model file, infer task, trainer, scoring, inputs.

``apps/emlabel/main.py`` builds its tasks by looping over :data:`METHODS`; a new method is
one entry here (plus its learner or trainer in the library). ``depends_on`` names the
models a method reads besides its own (AIDE and EM read the ``segmentation`` model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emlabel.settings import AppSettings

Factory = Callable[["MethodContext"], Any]


@dataclasses.dataclass(frozen=True)
class MethodContext:
    """What a task factory gets: the model folder and the app's settings."""

    model_dir: Path
    settings: AppSettings

    def model(self, name: str) -> str:
        """Path of method ``name``'s model file."""
        return str(self.model_dir / METHOD_BY_NAME[name].model_file)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """One method of the app and the MONAI Label tasks it serves."""

    name: str
    model_file: str
    description: str
    infer: Factory | None = None
    trainer: Factory | None = None
    scoring: dict[str, Factory] = dataclasses.field(default_factory=dict)
    depends_on: tuple[str, ...] = ()


def _segmentation_infer(ctx: MethodContext, name: str, description: str) -> Any:
    from emlabel.monailabel.infer import SegmentationInfer

    return SegmentationInfer(
        model_path=ctx.model(name), settings=ctx.settings, description=description
    )


def _segmentation_trainer(ctx: MethodContext) -> Any:
    from emlabel.monailabel.train import SegmentationTrainer

    return SegmentationTrainer(
        model_path=ctx.model("segmentation"), settings=ctx.settings,
        description="Supervised training on the best available label of each image",
    )  # fmt: skip


def _aide_infer(ctx: MethodContext) -> Any:
    from emlabel.monailabel.aide import AIDEInfer

    return AIDEInfer(
        model_path=ctx.model("aide"), settings=ctx.settings,
        description="AIDE: mean of two cross-correcting UNets; reports their disagreement",
    )  # fmt: skip


def _aide_trainer(ctx: MethodContext) -> Any:
    from emlabel.monailabel.aide import AIDETrainer3D

    return AIDETrainer3D(
        model_path=ctx.model("aide"), segmentation_model_path=ctx.model("segmentation"),
        settings=ctx.settings,
        description="AIDE: two networks correct noisy labels; corrections become versions",
    )  # fmt: skip


def _cgs_infer(ctx: MethodContext) -> Any:
    from emlabel.monailabel.cgs import CGSInfer

    return CGSInfer(
        model_path=ctx.model("cgs"), settings=ctx.settings,
        description="CGS generalist head (a plain U-Net) trained with specialist heads",
    )  # fmt: skip


def _cgs_trainer(ctx: MethodContext) -> Any:
    from emlabel.monailabel.cgs import CGSTrainTask

    return CGSTrainTask(
        model_path=ctx.model("cgs"), settings=ctx.settings,
        description="CGS: generalist + one specialist head per structure, semi-supervised",
    )  # fmt: skip


def _ihed(ctx: MethodContext) -> Any:
    from emlabel.monailabel.cgs import IHEDScoring

    return IHEDScoring(model_path=ctx.model("cgs"), settings=ctx.settings)


def _stats_trainer(ctx: MethodContext) -> Any:
    from emlabel.monailabel.stats import StatsTrainTask

    return StatsTrainTask(
        model_path=ctx.model("stats"), settings=ctx.settings,
        description="Learn masks from per-structure volumes and a few clicked voxels",
    )  # fmt: skip


def _em_trainer(ctx: MethodContext) -> Any:
    from emlabel.monailabel.em import EMTrainTask

    return EMTrainTask(
        model_path=ctx.model("em"), settings=ctx.settings,
        description="EM relabeling: verifier + expert correct labels, then retrain a learner",
    )  # fmt: skip


def _verifier(ctx: MethodContext) -> Any:
    from emlabel.monailabel.em import VerifierScoring

    return VerifierScoring(model_path=ctx.model("segmentation"), settings=ctx.settings)


METHODS: tuple[MethodSpec, ...] = (
    MethodSpec(
        name="segmentation",
        model_file="segmentation.pt",
        description="3D UNet segmentation of every structure in the label map",
        infer=lambda ctx: _segmentation_infer(
            ctx, "segmentation", "3D UNet segmentation of every structure in the label map"
        ),
        trainer=_segmentation_trainer,
    ),
    MethodSpec(
        name="aide",
        model_file="aide.pt",
        description="AIDE: two cross-correcting networks",
        infer=_aide_infer,
        trainer=_aide_trainer,
        depends_on=("segmentation",),
    ),
    MethodSpec(
        name="cgs",
        model_file="cgs.pt",
        description="CGS: generalist + specialist heads",
        infer=_cgs_infer,
        trainer=_cgs_trainer,
        scoring={"ihed": _ihed},
    ),
    MethodSpec(
        name="stats",
        model_file="stats.pt",
        description="Masks from summary statistics and clicks",
        infer=lambda ctx: _segmentation_infer(
            ctx, "stats", "UNet learned from per-structure volumes and a few clicks"
        ),
        trainer=_stats_trainer,
    ),
    MethodSpec(
        name="em",
        model_file="em.pt",
        description="EM relabeling over a learner (its model is the learner's)",
        trainer=_em_trainer,
        scoring={"verifier": _verifier},
        depends_on=("segmentation", "aide", "cgs"),
    ),
)
METHOD_BY_NAME: dict[str, MethodSpec] = {m.name: m for m in METHODS}
