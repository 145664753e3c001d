"""Training a segmentation network from known areas/volumes, a few clicks and any full labels.

Every optimizer step (Adam) takes a batch of images (shuffled each epoch by ``options.seed``;
the last, smaller batch is kept) and minimises

  L = lambda_rec L_rec + lambda_s L_stat + lambda_o L_ovl + lambda_ent L_ent + lambda_full DiceCE

(:func:`~emlabel.methods.stats.losses.stats_loss`): each image contributes the terms its
supervision allows -- L_stat where an area/volume is known, L_ovl where voxels are clicked,
DiceCE where a full label map is given ("alongside any full labels"), L_rec always (unless
``use_reconstruction`` is off). Images without any supervision still shape L_rec.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from emlabel.methods.stats.geodesic import geodesic_area_labels
from emlabel.methods.stats.losses import class_logits, stats_loss
from emlabel.methods.stats.options import StatsOptions
from emlabel.methods.stats.postprocess import area_matched_labels
from emlabel.methods.stats.targets import ImageTargets
from emlabel.training.skeleton import EpochTrainer

_TERMS: tuple[str, ...] = ("total", "rec", "stat", "ovl", "ent", "full")


@dataclasses.dataclass(frozen=True)
class StatsEpochStats:
    """What one epoch did; a loss term no batch had is NaN."""

    epoch: int
    """0-based epoch index."""
    loss: float
    """Mean total loss over the batches."""
    loss_rec: float
    """Mean L_rec over the batches that had it."""
    loss_stat: float
    """Mean L_stat over the batches that had it."""
    loss_ovl: float
    """Mean L_ovl over the batches that had it."""
    loss_ent: float
    """Mean L_ent over the batches that had it (NaN when lambda_ent is 0)."""
    loss_full: float
    """Mean DiceCE on full labels over the batches that had it."""
    area_error: float
    """Mean |predicted size - A| / A over (image, structure) pairs with a known size A; the
    predicted size is the hard (argmax) mask's voxel count times the voxel volume, taken from
    the training forward pass (before that batch's step). NaN when no size is known."""
    soft_area_error: float
    """The same with the soft size sum(m_k) * v (what L_stat sees)."""
    n_batches: int
    """Optimizer steps in this epoch."""
    seconds: float = 0.0
    """Wall time of the epoch."""


class StatsTrainer(EpochTrainer["StatsEpochStats"]):
    """One network trained with the summary-statistics losses on in-memory images.

    ``network``: a module mapping ``[B, C_in, *spatial]`` to logits ``[B, C, *spatial]``
    (C = K + 1 softmax classes, or C = 1 read as a sigmoid mask of one structure), or a
    factory building one (called under ``options.seed``). ``images``: ``[N, C_in, *spatial]``
    float, 2D or 3D; ``targets``: one :class:`ImageTargets` per image (its spacing gives the
    voxel size). ``full_labels``: optional ``[N, *spatial]`` long label maps, used for the
    images where ``full_label_mask`` ``[N]`` is True (default: all of them).
    """

    def __init__(
        self,
        network: nn.Module | Callable[[], nn.Module],
        images: torch.Tensor,
        targets: Sequence[ImageTargets],
        *,
        full_labels: torch.Tensor | None = None,
        full_label_mask: torch.Tensor | None = None,
        options: StatsOptions | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.options = options or StatsOptions()
        self.options.validate()
        self.max_epochs = self.options.max_epochs
        if images.ndim not in (4, 5):
            raise ValueError(
                f"images must be [N, C, *spatial] (2D or 3D), got {tuple(images.shape)}"
            )
        n = images.shape[0]
        spatial = tuple(images.shape[2:])
        self.targets: list[ImageTargets] = list(targets)
        if len(self.targets) != n:
            raise ValueError(f"{len(self.targets)} targets for {n} images")
        for i, t in enumerate(self.targets):
            if not isinstance(t, ImageTargets):
                raise ValueError(f"targets[{i}] must be ImageTargets, got {type(t).__name__}")
            try:
                t.check_shape(spatial)
            except ValueError as e:
                raise ValueError(f"targets[{i}]: {e}") from e

        self.device = torch.device(device)
        self.images = images.float().to(self.device)
        if isinstance(network, nn.Module):
            self.network = network.to(self.device)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.options.seed)
                self.network = network().to(self.device)
        self.num_classes = self._count_classes()
        """K + 1: background plus structures (2 for a sigmoid network)."""
        k_max = max((t.max_structure for t in self.targets), default=0)
        if k_max >= self.num_classes:
            raise ValueError(
                f"targets mention structure {k_max} but the network gives "
                f"{self.num_classes} classes (background + {self.num_classes - 1})"
            )

        self.full_labels: torch.Tensor | None = None
        self.full_label_mask = torch.zeros(n, dtype=torch.bool)
        if full_labels is not None:
            if full_labels.shape != (n, *spatial):
                raise ValueError(
                    f"full_labels must be [N, *spatial] = {(n, *spatial)}, "
                    f"got {tuple(full_labels.shape)}"
                )
            mask = (
                torch.ones(n, dtype=torch.bool)
                if full_label_mask is None
                else full_label_mask.bool().cpu()
            )
            if mask.shape != (n,):
                raise ValueError(f"full_label_mask must be [N] = [{n}], got {tuple(mask.shape)}")
            used = full_labels[mask]
            if used.numel() and (int(used.min()) < 0 or int(used.max()) >= self.num_classes):
                raise ValueError(
                    f"full label values must lie in 0..{self.num_classes - 1}, "
                    f"got {int(used.min())}..{int(used.max())}"
                )
            self.full_labels = full_labels.long().to(self.device)
            self.full_label_mask = mask.clone()
        elif full_label_mask is not None:
            raise ValueError("full_label_mask was given without full_labels")
        self.grown_mask = torch.zeros(n, dtype=torch.bool)
        """Images whose full label was grown from their clicks (``options.grow_labels``)."""
        if self.options.grow_labels:
            self._grow_labels(spatial)

        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=self.options.learning_rate)
        self.rng = torch.Generator().manual_seed(self.options.seed)

    def _grow_labels(self, spatial: tuple[int, ...]) -> None:
        """Give every image without a full label, but with a size and clicks, the label grown
        from its clicks (:func:`geodesic_area_labels`) as its full label."""
        for i, t in enumerate(self.targets):
            if bool(self.full_label_mask[i]):
                continue
            grown = geodesic_area_labels(
                self.images[i], t, intensity_weight=self.options.grow_intensity_weight
            )
            if grown is None:
                continue
            if self.full_labels is None:
                self.full_labels = torch.zeros(
                    (len(self.targets), *spatial), dtype=torch.long, device=self.device
                )
            self.full_labels[i] = grown.to(self.device)
            self.full_label_mask[i] = True
            self.grown_mask[i] = True

    def grown_labels(self) -> dict[int, torch.Tensor]:
        """The labels grown from clicks, by image index (empty unless ``grow_labels``)."""
        if self.full_labels is None:
            return {}
        return {
            int(i): self.full_labels[int(i)].cpu() for i in torch.nonzero(self.grown_mask).flatten()
        }

    def _count_classes(self) -> int:
        was = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                c = int(self.network(self.images[:1]).shape[1])
        finally:
            self.network.train(was)
        return max(c, 2)

    def train_epoch(self, epoch0: int) -> StatsEpochStats:
        """One pass over the images in shuffled batches, one Adam step per batch."""
        start = time.perf_counter()
        o = self.options
        n = self.images.shape[0]
        bs = min(o.batch_size, n)
        order = torch.randperm(n, generator=self.rng)
        sums = dict.fromkeys(_TERMS, 0.0)
        counts = dict.fromkeys(_TERMS, 0)
        hard_err: list[float] = []
        soft_err: list[float] = []
        self.network.train()
        n_batches = 0
        for s in range(0, n, bs):
            idx = order[s : s + bs]
            x = self.images[idx.to(self.device)]
            batch_targets = [self.targets[int(i)] for i in idx]
            has_full = self.full_label_mask[idx]
            labels = None
            if self.full_labels is not None and bool(has_full.any()):
                labels = self.full_labels[idx.to(self.device)]
            logits = class_logits(self.network(x))
            terms = stats_loss(
                logits, x, batch_targets, options=o, full_labels=labels, has_full=has_full
            )
            self.optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            self.optimizer.step()
            n_batches += 1
            for name, value in terms.as_floats().items():
                if value is not None:
                    sums[name] += value
                    counts[name] += 1
            hard, soft = _area_errors(logits.detach(), batch_targets)
            hard_err.extend(hard)
            soft_err.extend(soft)

        def mean(name: str) -> float:
            return sums[name] / counts[name] if counts[name] else math.nan

        return StatsEpochStats(
            epoch=epoch0,
            loss=mean("total"),
            loss_rec=mean("rec"),
            loss_stat=mean("stat"),
            loss_ovl=mean("ovl"),
            loss_ent=mean("ent"),
            loss_full=mean("full"),
            area_error=sum(hard_err) / len(hard_err) if hard_err else math.nan,
            soft_area_error=sum(soft_err) / len(soft_err) if soft_err else math.nan,
            n_batches=n_batches,
            seconds=time.perf_counter() - start,
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The network's weights."""
        return self.network.state_dict()

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax ``[N, K + 1, *spatial]`` of the network in eval mode (channel k = m_k)."""
        was = self.network.training
        self.network.eval()
        out = []
        try:
            with torch.no_grad():
                for s in range(0, images.shape[0], self.options.batch_size):
                    batch = images[s : s + self.options.batch_size].float().to(self.device)
                    out.append(torch.softmax(class_logits(self.network(batch)), dim=1).cpu())
        finally:
            self.network.train(was)
        return torch.cat(out)

    def predict_area_matched(
        self, images: torch.Tensor, targets: Sequence[ImageTargets]
    ) -> torch.Tensor:
        """Label maps ``[N, *spatial]`` whose known sizes are met exactly (see postprocess.py)."""
        probs = self.predict(images)
        return torch.stack([area_matched_labels(p, t) for p, t in zip(probs, targets, strict=True)])

    def predict_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Hard label maps ``[N, *spatial]`` (argmax of :meth:`predict`)."""
        return self.predict(images).max(dim=1).indices


def _area_errors(
    logits: torch.Tensor, targets: Sequence[ImageTargets]
) -> tuple[list[float], list[float]]:
    """|size - A| / A of the hard and the soft masks, per (image, structure) with a size."""
    probs = torch.softmax(logits, dim=1)
    hard_labels = logits.max(dim=1).indices
    hard: list[float] = []
    soft: list[float] = []
    for i, t in enumerate(targets):
        v = t.voxel_volume
        for st in t.structures:
            if st.area_mm is None:
                continue
            a = st.area_mm
            hard.append(abs(float((hard_labels[i] == st.structure).sum()) * v - a) / a)
            soft.append(abs(float(probs[i, st.structure].sum()) * v - a) / a)
    return hard, soft
