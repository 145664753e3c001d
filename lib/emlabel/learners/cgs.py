"""Learner ``cgs``: generalist head + one specialist per structure (semi-supervised).

Its members are the teacher's generalist label map and the map the specialists agree on
(a voxel is structure j where exactly specialist j says "mine"), so the critic sees where
the heads disagree. It trains on unlabeled images itself: the EM loop adds no pseudo-labels.
One EM "epoch" is ``ceil(labeled / labeled_batch_size)`` CGS iterations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from emlabel.errors import InvalidRequestError
from emlabel.learners.segmentation import window_inferer
from emlabel.methods.cgs import CGSOptions, CGSTrainer, head_decisions
from emlabel.methods.em.items import EMItem
from emlabel.methods.em.learner import FitSpec, Learner
from emlabel.nets.app import cgs_network
from emlabel.settings import AppSettings
from emlabel.training.loading import LoadedSet, load_items

FULL_MODEL_KEY = "full_teacher"
"""Checkpoint key of the whole teacher (all heads; scoring ``ihed`` reads it)."""


def default_cgs_options(settings: AppSettings) -> CGSOptions:
    return CGSOptions(
        max_iterations=200, labeled_batch_size=2, unlabeled_batch_size=2, seed=settings.seed
    )


class AllHeads(torch.nn.Module):
    """Generalist logits followed by every specialist's 3 logits, on the channel axis."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        generalist, specialists = self.net.forward_all(x)
        return torch.cat([generalist, *specialists], dim=1)


def specialists_label(out: torch.Tensor, k: int) -> torch.Tensor:
    """``[*spatial]`` label map from all heads' output ``[C, *spatial]``: structure j where
    exactly specialist j decides "mine", else background."""
    specialists = [out[k + 1 + 3 * j : k + 4 + 3 * j][None] for j in range(k)]
    mine = head_decisions(specialists)[0] == 1  # [K, *spatial]
    label = torch.zeros(out.shape[1:], dtype=torch.long)
    single = mine.sum(dim=0) == 1
    label[single] = mine.long().max(dim=0).indices[single] + 1
    return label


class CGSLearner(Learner):
    """CGS teacher; serves the generalist-only U-Net."""

    name = "cgs"
    model_file = "cgs.pt"
    multiple_of = 16
    semi_supervised = True
    state_key = FULL_MODEL_KEY

    def __init__(self, *, settings: AppSettings, options: CGSOptions | None = None) -> None:
        self.settings = settings
        self.options = options or default_cgs_options(settings)
        self.trainer: CGSTrainer | None = None
        self.teacher = cgs_network(settings).eval()
        self._trained = False

    def fit(self, items: Sequence[EMItem], spec: FitSpec) -> dict[str, Any]:
        labeled = [item for item in items if item.label]
        unlabeled = [item for item in items if not item.label]
        if not labeled or not unlabeled:
            raise InvalidRequestError(
                f"cgs needs labeled and unlabeled images (has {len(labeled)} labeled, "
                f"{len(unlabeled)} unlabeled)"
            )
        data = load_items(
            [item.as_dict() for item in [*labeled, *unlabeled]],
            settings=self.settings,
            multiple_of=self.multiple_of,
        )
        n = len(labeled)
        iterations = spec.epochs * math.ceil(n / self.options.labeled_batch_size)
        torch.manual_seed(spec.seed)
        options = dataclasses.replace(self.options, max_iterations=iterations, seed=spec.seed)
        self.trainer = CGSTrainer(cgs_network(self.settings), options)
        on_epoch = spec.on_epoch
        report = None if on_epoch is None else (lambda _i, stats: on_epoch(stats))
        self.trainer.fit(data.images[:n], data.labels[:n], data.images[n:], on_step=report)
        self.teacher = self.trainer.teacher.eval()
        self._trained = True
        return {"iterations": iterations, "labeled": n, "unlabeled": len(unlabeled)}

    def members(self, data: LoadedSet) -> list[list[np.ndarray]]:
        inferer = window_inferer(self.settings)
        heads, k = AllHeads(self.teacher).eval(), self.settings.num_classes - 1
        out = []
        with torch.no_grad():
            for i in range(data.images.shape[0]):
                all_heads = inferer(data.images[i : i + 1], heads)[0]
                generalist = all_heads[: k + 1].max(dim=0).indices
                out.append(
                    [generalist.numpy().astype(np.uint8),
                     specialists_label(all_heads, k).numpy().astype(np.uint8)]
                )  # fmt: skip
        return out

    @property
    def served(self) -> torch.nn.Module:
        """The teacher (its generalist-only copy is what infer ``cgs`` serves)."""
        return self.teacher

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generalist-only U-Net that infer ``cgs`` serves."""
        return self.teacher.generalist_only().state_dict()

    def checkpoint_extra(self) -> dict[str, Any]:
        return {FULL_MODEL_KEY: self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Takes the full teacher's weights (the served generalist alone cannot be resumed)."""
        self.teacher.load_state_dict(state)
        self.teacher.eval()
        self._trained = True
