"""The CGS semi-supervised frame: mean teacher, weak -> strong views, cross-consistency.

One iteration (:meth:`CGSTrainer.step`):

1. weak view of the labeled batch (image + label) and of the unlabeled batch;
2. the teacher (EMA, eval mode) predicts the weak unlabeled view -> pseudo-labels
   (y_g, M_g), (y_s, M_s), (y_e, M_e) and the specialists' decisions c_k;
3. strong view = intensity jitter of the weak view + CutMix between unlabeled images;
   every pseudo-label and mask is mixed with the same boxes;
4. the student sees labeled + strong unlabeled images in one batch;
   L = L_sup + lambda(s) L_unsup with s = iteration / (max_iterations - 1);
5. SGD step with the poly learning rate, then the EMA update of the teacher.

``use_specialists=False`` runs the same frame with the generalist only (ablation
baseline): generalist pseudo-labels (y_g, M_g), generalist losses, and the optimizer
only holds the trunk and generalist head.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from emlabel.methods.cgs.augment import intensity_jitter, random_cutmix, weak_view
from emlabel.methods.cgs.losses import lambda_schedule, supervised_loss, unsupervised_loss
from emlabel.methods.cgs.options import CGSOptions
from emlabel.methods.cgs.pseudo import make_pseudo_labels
from emlabel.methods.cgs.teacher import ema_update, make_teacher
from emlabel.nets.cgs import CGSNet
from emlabel.training.skeleton import EpochTrainer

StepCallback = Callable[[int, dict[str, float]], None]


class CGSTrainer(EpochTrainer[dict[str, float]]):
    """Trains a :class:`CGSNet` (the student) and its mean teacher with the CGS frame."""

    def __init__(
        self,
        net: CGSNet,
        options: CGSOptions | None = None,
        *,
        use_specialists: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.options = options or CGSOptions()
        self.options.validate()
        self.max_epochs = self.options.max_iterations
        self.use_specialists = use_specialists
        self.device = torch.device(device)
        self.student = net.to(self.device)
        self.teacher = make_teacher(self.student)
        params = self.student.parameters() if use_specialists else net.generalist_parameters()
        self.optimizer = torch.optim.SGD(
            params,
            lr=self.options.learning_rate,
            momentum=self.options.momentum,
            weight_decay=self.options.weight_decay,
        )
        self.generator = torch.Generator().manual_seed(self.options.seed)

    # -- schedules ---------------------------------------------------------------------
    def progress(self, iteration: int) -> float:
        """Run progress s in [0, 1] (0 at the first iteration, 1 at the last)."""
        return min(max(iteration / max(self.options.max_iterations - 1, 1), 0.0), 1.0)

    def learning_rate(self, iteration: int) -> float:
        """Poly schedule: learning_rate * (1 - iteration / max_iterations) ** poly_power."""
        remaining = max(1.0 - iteration / self.options.max_iterations, 0.0)
        return self.options.learning_rate * remaining**self.options.poly_power

    # -- training ----------------------------------------------------------------------
    def _forward(
        self, net: nn.Module, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        if self.use_specialists:
            generalist, specialists = net.forward_all(x)
            return generalist, specialists
        return net(x), None

    def step(
        self,
        labeled_batch: tuple[torch.Tensor, torch.Tensor],
        unlabeled_batch: torch.Tensor,
        iteration: int,
    ) -> dict[str, float]:
        """One training iteration; returns (and records) its stats.

        ``labeled_batch`` = (images ``[N, C, *spatial]`` float, labels ``[N, *spatial]``
        long in 0..K); ``unlabeled_batch`` = images ``[M, C, *spatial]``.
        """
        opts = self.options
        images, labels = labeled_batch
        if labels.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}"
            )
        images, labels = weak_view(
            images.cpu(),
            labels.cpu(),
            generator=self.generator,
            rotation_degrees=opts.rotation_degrees,
        )
        assert labels is not None
        weak, _ = weak_view(
            unlabeled_batch.cpu(), generator=self.generator, rotation_degrees=opts.rotation_degrees
        )
        weak = weak.to(self.device)

        self.teacher.eval()
        with torch.no_grad():
            t_gen, t_spec = self._forward(self.teacher, weak)
            pseudo = make_pseudo_labels(
                t_gen, t_spec, tau=opts.tau, confident_masks=opts.confident_masks
            )
        fractions = pseudo.mask_fractions()

        strong = intensity_jitter(
            weak.cpu(), generator=self.generator, strength=opts.jitter_strength
        )
        mix = random_cutmix(
            strong.shape[0], strong.shape[2:], opts.cutmix_area, generator=self.generator
        )
        strong = mix(strong).to(self.device)
        pseudo = pseudo.map(mix)

        self.student.train()
        n_labeled = images.shape[0]
        gen, spec = self._forward(self.student, torch.cat([images.to(self.device), strong]))
        sup, sup_parts = supervised_loss(
            gen[:n_labeled],
            None if spec is None else [s[:n_labeled] for s in spec],
            labels.to(self.device),
        )
        unsup, unsup_parts = unsupervised_loss(
            gen[n_labeled:], None if spec is None else [s[n_labeled:] for s in spec], pseudo
        )
        weight = lambda_schedule(self.progress(iteration), opts.lambda_max)
        loss = sup + weight * unsup

        lr = self.learning_rate(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        decay = ema_update(self.teacher, self.student, iteration + 1, opts.ema_decay_max)

        stats = {
            "iteration": float(iteration),
            "loss": loss.item(),
            "loss_sup": sup.item(),
            "loss_unsup": unsup.item(),
            **{f"loss_{k}": v.item() for k, v in {**sup_parts, **unsup_parts}.items()},
            "lambda": weight,
            "lr": lr,
            "ema_decay": decay,
            **fractions,
        }
        return stats

    def train_epoch(self, epoch0: int) -> dict[str, float]:
        """One CGS iteration (the skeleton's unit here): a labeled and an unlabeled batch."""
        labeled_images, labeled_labels, unlabeled_images = self._data
        li = self._sample(labeled_images.shape[0], self.options.labeled_batch_size)
        ui = self._sample(unlabeled_images.shape[0], self.options.unlabeled_batch_size)
        return self.step((labeled_images[li], labeled_labels[li]), unlabeled_images[ui], epoch0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The teacher's weights (all heads; :meth:`serving_model` keeps the generalist)."""
        return self.teacher.state_dict()

    def fit(  # type: ignore[override]  (CGS takes its in-memory data here)
        self,
        labeled_images: torch.Tensor,
        labeled_labels: torch.Tensor,
        unlabeled_images: torch.Tensor,
        *,
        iterations: int | None = None,
        on_step: StepCallback | None = None,
    ) -> list[dict[str, float]]:
        """Run iterations until ``iterations`` (default ``options.max_iterations``) have run,
        on random batches of the in-memory data.

        Returns the stats of the steps run here; ``on_step(iteration, stats)`` is called
        after each.
        """
        if labeled_images.shape[0] != labeled_labels.shape[0]:
            raise ValueError("labeled_images and labeled_labels differ in length")
        if labeled_images.shape[0] == 0 or unlabeled_images.shape[0] == 0:
            raise ValueError("need at least one labeled and one unlabeled image")
        self._data = (labeled_images, labeled_labels, unlabeled_images)
        before = len(self.history)
        report = None if on_step is None else (lambda st: on_step(int(st["iteration"]), st))
        super().fit(iterations, on_epoch=report)
        return self.history[before:]

    def _sample(self, n: int, batch_size: int) -> torch.Tensor:
        if n >= batch_size:
            return torch.randperm(n, generator=self.generator)[:batch_size]
        return torch.randint(n, (batch_size,), generator=self.generator)

    # -- inference ---------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class map ``[N, *spatial]`` of the teacher's generalist head (what is validated)."""
        self.teacher.eval()
        return self.teacher(images.to(self.device)).max(dim=1).indices

    def serving_model(self) -> nn.Module:
        """The teacher's generalist-only network (a plain U-Net) in eval mode."""
        return self.teacher.generalist_only().eval()
