"""Learners the EM engine can drive, by name (``learner`` option of the ``em`` trainer)."""

from __future__ import annotations

import logging
from pathlib import Path

from emlabel.checkpoints import load_payload
from emlabel.errors import InvalidRequestError
from emlabel.learners.aide import AIDELearner
from emlabel.learners.cgs import CGSLearner
from emlabel.learners.segmentation import SegmentationLearner
from emlabel.methods.em.learner import Learner
from emlabel.settings import AppSettings

logger = logging.getLogger(__name__)

LEARNERS: dict[str, type[Learner]] = {
    cls.name: cls for cls in (SegmentationLearner, AIDELearner, CGSLearner)
}


def make_learner(name: str, *, settings: AppSettings) -> Learner:
    """A fresh learner by name; a 400 listing the valid names for an unknown one."""
    try:
        cls = LEARNERS[name]
    except KeyError:
        raise InvalidRequestError(
            f"unknown learner {name!r}; valid: {', '.join(sorted(LEARNERS))}"
        ) from None
    return cls(settings=settings)


def distributed_learners() -> list[str]:
    """The learners that train under torchrun (DistributedDataParallel)."""
    return sorted(name for name, cls in LEARNERS.items() if cls.distributed)


def load_learner(name: str, *, settings: AppSettings, model_dir: Path) -> Learner:
    """A learner with its published model (``model_dir / model_file``) loaded, if there is one."""
    learner = make_learner(name, settings=settings)
    path = Path(model_dir) / learner.model_file
    if not path.exists():
        return learner
    state = load_payload(path).get(learner.state_key)
    if not isinstance(state, dict):  # e.g. an uploaded cgs.pt without its full teacher
        logger.warning("%s has no '%s': learner %s starts untrained", path, learner.state_key, name)
        return learner
    try:
        learner.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        raise InvalidRequestError(f"{path.name} does not fit learner '{name}': {e}") from e
    return learner


__all__ = [
    "LEARNERS",
    "AIDELearner",
    "CGSLearner",
    "Learner",
    "SegmentationLearner",
    "distributed_learners",
    "make_learner",
]
