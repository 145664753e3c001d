"""AIDE's cross-model co-training with local label filtering and global label correction.

State: two networks f1, f2 of the same architecture (independent initialisation) and two label
copies L1, L2 (both start as the given labels). **f1 trains on L2 and f2 trains on L1**;
network k writes its corrections into Lk, which the *other* network learns from.

Every batch (B items, shuffled by seed, incomplete last batch dropped):

1. per-sample losses l1 = Seg(f1(x), L2), l2 = Seg(f2(x), L1);
2. f1's batch is split by l2 (the counterpart) into clean / suspected noisy, f2's by l1;
3. consistency targets (q2, w2) of f2 on f1's noisy items and (q1, w1) of f1 on f2's (K
   augmented copies, no gradients; :func:`~emlabel.methods.aide.augment.consistency_target`):
   only the noisy items' targets enter a loss, so the clean ones' are not computed (half
   the no-grad passes at ``filter_ratio`` 0.5; the spec computes them for the whole batch);
   with ``identity_copy`` the first copy is the un-augmented item, whose logits step 1
   computed, and ``no_grad_precision`` may run the passes in bfloat16;
4. loss_f1 = mean_clean(l1) + (1 - r) mean_noisy(l1)
             + consistency_weight * r * mean_{noisy, pixels, channels}(w2 (softmax f1(x) - q2)^2),
   symmetric for f2 with (q1, w1); one Adam (amsgrad) step per network; r = ramp(epoch0).

After each correction epoch (:func:`~emlabel.methods.aide.schedule.is_correction_epoch`)
network k ranks every item by Dice(its prediction, its own training target) -- f1 against L2,
f2 against L1, as the spec says -- and its prediction replaces Lk for the lowest fraction
(:func:`~emlabel.methods.aide.correction.global_correction`; never HQ items, never empty
predictions). Both networks' corrections are computed before either is written, so the
correction step does not depend on the order of the networks. StepLR steps once per epoch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from emlabel.methods.aide.augment import apply_augment, consistency_target, sample_augment
from emlabel.methods.aide.correction import (
    counterpart_confirms,
    global_correction,
    label_dice,
    predict_labels,
)
from emlabel.methods.aide.filtering import filter_scores, split_clean_noisy
from emlabel.methods.aide.losses import consistency_loss, seg_loss_per_sample
from emlabel.methods.aide.options import AIDEOptions
from emlabel.methods.aide.precision import resolve_precision
from emlabel.methods.aide.schedule import is_correction_epoch, ramp
from emlabel.training.skeleton import EpochTrainer


@dataclasses.dataclass(frozen=True)
class EpochStats:
    """What one AIDE epoch did."""

    epoch: int
    """0-based epoch index."""
    loss_f1: float
    """Mean total loss of f1 over the batches."""
    loss_f2: float
    """Mean total loss of f2 over the batches."""
    dice_f1: float
    """Mean Dice of f1's training-batch predictions (hard argmax) to its target L2."""
    dice_f2: float
    """Mean Dice of f2's training-batch predictions (hard argmax) to its target L1."""
    ramp: float
    """r(e) used in this epoch."""
    learning_rate: float
    """Learning rate used in this epoch."""
    n_batches: int
    """Optimizer steps per network."""
    n_corrected: int = 0
    """Labels replaced at the end of the epoch (both networks); filled in by ``fit``."""
    n_rejected: int = 0
    """Corrections the counterpart did not confirm (``correction_gate``); filled in by ``fit``."""
    seconds: float = 0.0
    """Wall time of the epoch."""


@dataclasses.dataclass(frozen=True)
class LabelUpdate:
    """One label replacement written at the end of an epoch."""

    network: int
    """1 or 2: the network whose prediction was written into its label copy L1 or L2."""
    index: int
    """Position of the item in the training set."""
    epoch: int
    """1-based epoch after which the label was replaced."""
    dice_before: float
    """Dice(prediction, the network's training target) that ranked the item."""
    dice_new_vs_old: float
    """Dice(new label, the label it replaced in Lk)."""
    new_label: torch.Tensor = dataclasses.field(repr=False, compare=False, default=None)
    """The label written (CPU, uint8), so a caller can store every correction as a version."""


INFERENCE_VOXELS = 2**18
"""Voxels per no-gradient prediction batch (16 images of 128 px; one volume of 64^3)."""


def _batch_dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Mean Dice of the hard predictions of a training batch to its targets, as
    :func:`label_dice` per item (foreground classes averaged; 1 when both are empty),
    computed on the batch at once (per item in numpy it took a tenth of AIDE's time)."""
    pred = logits.detach().max(dim=1).indices.flatten(1)
    target = target.flatten(1)
    per_class = []
    for c in range(1, logits.shape[1]):
        a, b = pred == c, target == c
        both = (a & b).sum(dim=1).double()
        total = (a.sum(dim=1) + b.sum(dim=1)).double()
        per_class.append(torch.where(total > 0, 2.0 * both / total.clamp_min(1.0), 1.0))
    return float(torch.stack(per_class).mean(dim=0).mean())


class AIDETrainer(EpochTrainer["EpochStats"]):
    """Two networks, two label copies, and AIDE's training loop over in-memory items.

    ``net_factory()`` builds one network mapping ``[B, C_in, *spatial]`` to logits
    ``[B, C, *spatial]`` (C >= 2); it is called twice under different seeds.
    ``images``: ``[N, C_in, *spatial]`` float; ``labels``: ``[N, *spatial]`` long class indices;
    ``hq_mask``: ``[N]`` bool, True for high-quality labels that are never replaced
    (default: none).
    """

    def __init__(
        self,
        net_factory: Callable[[], torch.nn.Module],
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        hq_mask: torch.Tensor | None = None,
        options: AIDEOptions | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.options = options or AIDEOptions()
        self.options.validate()
        self.max_epochs = self.options.max_epochs
        n = images.shape[0]
        if images.ndim not in (4, 5):
            raise ValueError(
                f"images must be [N, C, *spatial] (2D or 3D), got {tuple(images.shape)}"
            )
        if labels.shape != images.shape[:1] + images.shape[2:]:
            raise ValueError(
                f"labels must be [N, *spatial] matching images {tuple(images.shape)}, "
                f"got {tuple(labels.shape)}"
            )
        if n < self.options.batch_size:
            raise ValueError(
                f"{n} items cannot fill one batch of {self.options.batch_size} (drop_last)"
            )
        if hq_mask is None:
            hq_mask = torch.zeros(n, dtype=torch.bool)
        if hq_mask.shape != (n,):
            raise ValueError(f"hq_mask must be [N] = [{n}], got {tuple(hq_mask.shape)}")

        self.device = torch.device(device)
        self.no_grad_precision = resolve_precision(self.options.no_grad_precision, self.device)
        """float32 or bfloat16: the consistency copies' and correction predictions' passes."""
        self.images = images.float().to(self.device)
        self.labels1 = labels.long().clone().to(self.device)
        """L1: written by f1's corrections, learned by f2."""
        self.labels2 = labels.long().clone().to(self.device)
        """L2: written by f2's corrections, learned by f1."""
        self.hq_mask = hq_mask.bool().cpu().clone()

        seed = self.options.seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.f1 = net_factory().to(self.device)
            torch.manual_seed(seed + 1)
            self.f2 = net_factory().to(self.device)
        self.num_classes = self._count_classes()
        """C, the output channels of the networks."""
        self.opt1 = self._optimizer(self.f1)
        self.opt2 = self._optimizer(self.f2)
        self.sched1 = torch.optim.lr_scheduler.StepLR(
            self.opt1, step_size=self.options.lr_step, gamma=self.options.lr_gamma
        )
        self.sched2 = torch.optim.lr_scheduler.StepLR(
            self.opt2, step_size=self.options.lr_step, gamma=self.options.lr_gamma
        )
        self.rng = torch.Generator().manual_seed(seed)
        self.updates: list[LabelUpdate] = []
        self.last_rejected = 0
        """Corrections the gate refused at the last :meth:`end_of_epoch`."""

    def _count_classes(self) -> int:
        was = self.f1.training
        self.f1.eval()
        try:
            with torch.no_grad():
                c = int(self.f1(self.images[:1]).shape[1])
        finally:
            self.f1.train(was)
        if c < 2:
            raise ValueError(f"the networks must output C >= 2 channels, got {c}")
        return c

    def _optimizer(self, net: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(net.parameters(), lr=self.options.learning_rate, amsgrad=True)

    def _network_loss(
        self,
        per_sample: torch.Tensor,
        logits: torch.Tensor,
        clean: torch.Tensor,
        noisy: torch.Tensor,
        target: tuple[torch.Tensor, torch.Tensor] | None,
        r: float,
    ) -> torch.Tensor:
        """mean_clean(Seg) + (1 - r) mean_noisy(Seg) + weight * r * consistency on noisy
        (``target``: the counterpart's (q, w) of the ``noisy`` items, in their order)."""
        zero = per_sample.sum() * 0.0
        loss = per_sample[clean].mean() if len(clean) else zero
        if len(noisy):
            loss = loss + (1.0 - r) * per_sample[noisy].mean()
            if target is not None:
                q, w = target
                probs = torch.softmax(logits[noisy], dim=1)
                loss = loss + self.options.consistency_weight * r * consistency_loss(probs, q, w)
        return loss

    def _augment(self, x: torch.Tensor, *labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One random rotation/flip per item, applied to the images and to every label map.

        Labels are rotated as one-hot maps (bilinear) and re-discretised by argmax; voxels
        rotated in from outside are background.
        """
        o = self.options
        params = sample_augment(
            x.shape[0], max_rotation_deg=o.max_rotation_deg, flip_prob=o.flip_prob, rng=self.rng
        )
        out = [apply_augment(x, params)]
        for y in labels:
            one_hot = torch.nn.functional.one_hot(y, self.num_classes).movedim(-1, 1).float()
            out.append(apply_augment(one_hot, params).max(dim=1).indices)
        return tuple(out)

    def _inference_batch_size(self) -> int:
        """Items per no-gradient prediction batch: as many as hold :data:`INFERENCE_VOXELS`
        voxels (at most 16, at least the training batch): on CPU a 128 px 2D UNet predicts
        an item of a batch of 16 in 0.7x the time of one of a batch of 4."""
        per_item = max(1, self.images[0, 0].numel())
        return max(self.options.batch_size, min(16, INFERENCE_VOXELS // per_item))

    def _target(
        self, net: torch.nn.Module, x: torch.Tensor, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``net``'s consistency target of ``x``; ``logits``: its training pass on ``x``,
        reused as the un-augmented copy when ``identity_copy`` is on."""
        o = self.options
        return consistency_target(
            net,
            x,
            k=o.k_augment,
            rng=self.rng,
            options=o,
            identity_logits=logits if o.identity_copy else None,
            precision=self.no_grad_precision,
        )

    def train_epoch(self, epoch0: int) -> EpochStats:
        """One epoch of both networks (0-based ``epoch0`` sets the ramp); StepLR steps once."""
        start = time.perf_counter()
        o = self.options
        r = ramp(epoch0, o.warmup_epochs)
        lr = self.opt1.param_groups[0]["lr"]
        self.f1.train()
        self.f2.train()
        n = self.images.shape[0]
        order = torch.randperm(n, generator=self.rng)
        n_batches = n // o.batch_size
        sums = {"loss1": 0.0, "loss2": 0.0, "dice1": 0.0, "dice2": 0.0}
        # The consistency term only matters when its coefficient and the noisy set are nonzero.
        need_targets = o.consistency_weight * r > 0 and o.filter_ratio < 1.0
        for b in range(n_batches):
            idx = order[b * o.batch_size : (b + 1) * o.batch_size].to(self.device)
            x = self.images[idx]
            y1 = self.labels1[idx]
            y2 = self.labels2[idx]
            if o.train_augment:
                x, y1, y2 = self._augment(x, y1, y2)
            logits1 = self.f1(x)
            logits2 = self.f2(x)
            l1 = seg_loss_per_sample(logits1, y2)  # f1 learns from L2
            l2 = seg_loss_per_sample(logits2, y1)  # f2 learns from L1
            if o.filter_criterion == "seg":
                judged1, judged2 = l2.detach(), l1.detach()
            else:
                judged1 = filter_scores(logits2, y1, o.filter_criterion)
                judged2 = filter_scores(logits1, y2, o.filter_criterion)
            clean1, noisy1 = split_clean_noisy(judged1, o.filter_ratio)  # judged by f2
            clean2, noisy2 = split_clean_noisy(judged2, o.filter_ratio)  # judged by f1
            # the consistency targets, only where a loss uses them: f2's on f1's noisy items,
            # f1's on f2's (the weights have not stepped yet: the same targets as before)
            t1 = t2 = None
            if need_targets and len(noisy1):
                t2 = self._target(self.f2, x[noisy1], logits2[noisy1])
            if need_targets and len(noisy2):
                t1 = self._target(self.f1, x[noisy2], logits1[noisy2])
            loss1 = self._network_loss(l1, logits1, clean1, noisy1, t2, r)
            loss2 = self._network_loss(l2, logits2, clean2, noisy2, t1, r)
            self.opt1.zero_grad(set_to_none=True)
            loss1.backward()
            self.opt1.step()
            self.opt2.zero_grad(set_to_none=True)
            loss2.backward()
            self.opt2.step()

            sums["loss1"] += float(loss1.detach())
            sums["loss2"] += float(loss2.detach())
            sums["dice1"] += _batch_dice(logits1, y2)
            sums["dice2"] += _batch_dice(logits2, y1)
        self.sched1.step()
        self.sched2.step()
        return EpochStats(
            epoch=epoch0,
            loss_f1=sums["loss1"] / n_batches,
            loss_f2=sums["loss2"] / n_batches,
            dice_f1=sums["dice1"] / n_batches,
            dice_f2=sums["dice2"] / n_batches,
            ramp=r,
            learning_rate=lr,
            n_batches=n_batches,
            seconds=time.perf_counter() - start,
        )

    def end_of_epoch(self, epoch1: int) -> list[LabelUpdate]:
        """Global label correction after 1-based epoch ``epoch1`` if the schedule says so.

        Network k ranks against its training target (f1: L2, f2: L1) and writes into Lk.
        Returns the replacements made (also appended to :attr:`updates`).
        """
        o = self.options
        self.last_rejected = 0
        if not is_correction_epoch(
            epoch1, o.warmup_epochs, o.correction_every, start=o.correction_start_epoch
        ):
            return []
        preds = {
            k: predict_labels(
                net,
                self.images,
                batch_size=self._inference_batch_size(),
                keep_largest_component=o.keep_largest_component,
                precision=self.no_grad_precision,
            )
            for k, net in ((1, self.f1), (2, self.f2))
        }
        proposals = {
            k: global_correction(
                net,
                self.images,
                target,
                hq_mask=self.hq_mask,
                fraction=o.correction_fraction,
                batch_size=o.batch_size,
                predictions=preds[k],
            )
            for k, net, target in ((1, self.f1, self.labels2), (2, self.f2, self.labels1))
        }
        written: list[LabelUpdate] = []
        for k, corrections in proposals.items():
            copy = self.labels1 if k == 1 else self.labels2
            counterpart = preds[2 if k == 1 else 1][0]
            for corr in corrections:
                if bool(self.hq_mask[corr.index]):  # global_correction never proposes these
                    raise AssertionError(f"correction proposed for HQ item {corr.index}")
                old = copy[corr.index].clone()
                new = corr.new_label.to(copy.device, copy.dtype)
                if o.correction_gate and not counterpart_confirms(
                    new, old, counterpart[corr.index].to(copy.device), self.num_classes
                ):
                    self.last_rejected += 1
                    continue
                copy[corr.index] = new
                written.append(
                    LabelUpdate(
                        network=k,
                        index=corr.index,
                        epoch=epoch1,
                        dice_before=corr.dice_before,
                        dice_new_vs_old=label_dice(new, old, self.num_classes),
                        new_label=new.detach().to("cpu", torch.uint8),
                    )
                )
        self.updates.extend(written)
        return written

    def after_epoch(self, epoch0: int, stats: EpochStats) -> EpochStats:
        """Global label correction (:meth:`end_of_epoch`), counted in the epoch's stats."""
        updates = self.end_of_epoch(epoch0 + 1)
        return dataclasses.replace(stats, n_corrected=len(updates), n_rejected=self.last_rejected)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Both networks' weights (keys ``f1.*`` and ``f2.*``)."""
        return {f"f{k}.{name}": value for k, net in ((1, self.f1), (2, self.f2))
                for name, value in net.state_dict().items()}  # fmt: skip

    def _probs(self, net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        was = net.training
        net.eval()
        out = []
        try:
            with torch.no_grad():
                for s in range(0, images.shape[0], self.options.batch_size):
                    batch = images[s : s + self.options.batch_size].float().to(self.device)
                    out.append(torch.softmax(net(batch), dim=1))
        finally:
            net.train(was)
        return torch.cat(out)

    def predict(self, images: torch.Tensor, *, network: int | None = None) -> torch.Tensor:
        """Softmax ``[N, C, *spatial]`` averaged over f1 and f2 (eval mode).

        ``network=1`` or ``2`` returns one network's softmax (the paper also reports f1 alone).
        """
        if network == 1:
            return self._probs(self.f1, images)
        if network == 2:
            return self._probs(self.f2, images)
        if network is not None:
            raise ValueError(f"network must be 1, 2 or None, got {network}")
        return 0.5 * (self._probs(self.f1, images) + self._probs(self.f2, images))

    def disagreement(self, images: torch.Tensor) -> torch.Tensor:
        """Per item 1 - Dice(hard prediction of f1, hard prediction of f2), a float tensor ``[N]``."""
        p1 = self._probs(self.f1, images)
        p2 = self._probs(self.f2, images)
        c = p1.shape[1]
        a, b = p1.max(dim=1).indices, p2.max(dim=1).indices
        return torch.tensor([1.0 - label_dice(a[i], b[i], c) for i in range(a.shape[0])])
