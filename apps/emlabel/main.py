"""EMLabel MONAI Label app: registers the tasks of every method; everything else lives in ``emlabel``."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First

import emlabel
from emlabel.monailabel import app as base
from emlabel.monailabel.registry import build_tasks
from emlabel.monailabel.review import VerifierStrategy
from emlabel.monailabel.strategies import RandomStrategy


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

    def _tasks(self, kind: str) -> dict[str, Any]:
        return build_tasks(kind, model_dir=self.model_dir, settings=self.settings)

    def init_infers(self) -> dict[str, Any]:
        infers = self._tasks("infer")
        return infers | self.bundle_infers(taken=set(infers))

    def init_trainers(self) -> dict[str, Any]:
        trainers = self._tasks("trainer")
        return trainers | self.bundle_trainers(taken=set(trainers))

    def init_scoring_methods(self) -> dict[str, Any]:
        return self._tasks("scoring")

    def init_strategies(self) -> dict[str, Any]:
        return {
            "random": RandomStrategy(),
            "first": First(),
            "verifier": VerifierStrategy(settings=self.settings, model_dir=str(self.model_dir)),
        }
