"""EMLabel MONAI Label app: registers the tasks; everything else lives in ``emlabel``."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First

import emlabel
from emlabel.monailabel import app as base
from emlabel.monailabel.aide import AIDEInfer, AIDETrainer3D
from emlabel.monailabel.cgs import CGSInfer, CGSTrainTask, IHEDScoring
from emlabel.monailabel.em import EMTrainTask, VerifierScoring, VerifierStrategy
from emlabel.monailabel.infer import SegmentationInfer
from emlabel.monailabel.stats import StatsTrainTask
from emlabel.monailabel.strategies import RandomStrategy
from emlabel.monailabel.train import SegmentationTrainer


# MONAI Label finds the app class as the one in this file whose *direct* bases include
# MONAILabelApp, hence the explicit second base (the MRO is unchanged).
class EMLabelApp(base.EMLabelAppBase, MONAILabelApp):
    """Annotation-efficient segmentation: label versions, self-correcting trainers, review."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, Any]) -> None:
        super().__init__(
            app_dir,
            studies,
            conf,
            name="EMLabel",
            description="Annotation-efficient segmentation with label versions and provenance",
            version=emlabel.__version__,
        )

    def init_infers(self) -> dict[str, Any]:
        infers = {
            "segmentation": SegmentationInfer(
                model_path=str(self.model_dir / "segmentation.pt"),
                settings=self.settings,
                description="3D UNet segmentation of every structure in the label map",
            ),
            "aide": AIDEInfer(
                model_path=str(self.model_dir / "aide.pt"),
                settings=self.settings,
                description="AIDE: mean of two cross-correcting UNets; reports their disagreement",
            ),
            "stats": SegmentationInfer(
                model_path=str(self.model_dir / "stats.pt"),
                settings=self.settings,
                description="UNet learned from per-structure volumes and a few clicks",
            ),
            "cgs": CGSInfer(
                model_path=str(self.model_dir / "cgs.pt"),
                settings=self.settings,
                description="CGS generalist head (a plain U-Net) trained with specialist heads",
            ),
        }
        return infers | self.bundle_infers(taken=set(infers))

    def init_trainers(self) -> dict[str, Any]:
        trainers = {
            "segmentation": SegmentationTrainer(
                model_path=str(self.model_dir / "segmentation.pt"),
                settings=self.settings,
                description="Supervised training on the best available label of each image",
            ),
            "aide": AIDETrainer3D(
                model_path=str(self.model_dir / "aide.pt"),
                segmentation_model_path=str(self.model_dir / "segmentation.pt"),
                settings=self.settings,
                description="AIDE: two networks correct noisy labels; corrections become versions",
            ),
            "cgs": CGSTrainTask(
                model_path=str(self.model_dir / "cgs.pt"),
                settings=self.settings,
                description="CGS: generalist + one specialist head per structure, semi-supervised",
            ),
            "stats": StatsTrainTask(
                model_path=str(self.model_dir / "stats.pt"),
                settings=self.settings,
                description="Learn masks from per-structure volumes and a few clicked voxels",
            ),
            "em": EMTrainTask(
                model_path=str(self.model_dir / "em.pt"),
                segmentation_model_path=str(self.model_dir / "segmentation.pt"),
                settings=self.settings,
                description="EM relabeling: verifier + expert correct labels, then retrain",
            ),
        }
        return trainers | self.bundle_trainers(taken=set(trainers))

    def init_scoring_methods(self) -> dict[str, Any]:
        return {
            "ihed": IHEDScoring(model_path=str(self.model_dir / "cgs.pt"), settings=self.settings),
            "verifier": VerifierScoring(
                model_path=str(self.model_dir / "segmentation.pt"), settings=self.settings
            ),
        }

    def init_strategies(self) -> dict[str, Any]:
        return {
            "random": RandomStrategy(),
            "first": First(),
            "verifier": VerifierStrategy(settings=self.settings, model_dir=str(self.model_dir)),
        }
