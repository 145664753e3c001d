"""The learned verifier: two small MONAI classifiers that judge labels against the image.

- **single**: (image, one structure's mask, model map?) -> logit of P(the mask is wrong),
  wrong meaning Dice to the right label below ``bad_dice``;
- **pair**: (image, mask A, mask B, model map?) -> logit that A is the better label. The
  prediction is made antisymmetric, ``P(A > B) = sigmoid((f(A, B) - f(B, A)) / 2)``, so the
  two orders always agree.

Both are :class:`monai.networks.nets.Classifier` (residual conv stages, stride 2) on the crop
of :mod:`.inputs`, 2D or 3D from the data. They are trained self-supervised
(:mod:`.samples`): the trusted labels are right, their corruptions, the model's own
misses and mix-ups with other structures are right or wrong by their Dice to them. Each
step draws ``batch_size // 4`` regions, makes all their candidates (single examples) and
up to four pairs per region, flips the batch along random axes and jitters the image's
intensities (``x * U(0.9, 1.1) + U(-0.1, 0.1)``). The loss is binary cross-entropy for both
heads, the single head's target a soft step at ``bad_dice`` (:func:`wrongness`) and its
positives weighted by ``n_right / n_wrong`` of the batch (clipped to [0.2, 5]). A share ``model_dropout`` of the regions is shown without the model's map, so the
same networks judge with or without a segmentation model.

Validation: with 5 or more trusted labels, ``validation_fraction`` of them (at least one) are
held out and never trained on; their candidates give the AUROC of the single head and the
pairwise accuracy. With fewer, the candidates are fresh corruptions of the training images
(``held_out_images`` = 0: an optimistic estimate, said so in :attr:`LearnedVerifier.validation`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import Classifier

from emlabel.checkpoints import CheckpointError, load_checkpoint, publish_checkpoint
from emlabel.verify.learned.inputs import default_grid, in_channels, network_input
from emlabel.verify.learned.samples import (
    Candidate,
    Region,
    TrustedLabel,
    candidates,
    regions,
    sample_pairs,
)

MIN_HELD_OUT_TRUSTED = 5
CHECKPOINT_KIND = "emlabel-learned-verifier"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LearnedVerifierOptions:
    """How the learned verifier trains (bounded: every field is checked)."""

    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    errors_per_region: int = 6
    bad_dice: float = 0.9
    target_width: float = 0.02
    """Width (in Dice) of the soft step of the single head's target; 0 = hard labels."""
    grid: tuple[int, ...] | None = None
    """Network input size; None: 64 x 64 in 2D, 32^3 in 3D."""
    channels: tuple[int, ...] = (16, 32, 64, 128)
    model_dropout: float = 0.5
    validation_fraction: float = 0.2
    seed: int = 0
    quick: bool = False
    """A quarter of the steps (tests, benchmarks' --quick)."""

    def validate(self) -> None:
        """ValueError naming every field out of range (called before training)."""
        checks = {
            "steps": 1 <= self.steps <= 100_000,
            "batch_size": 4 <= self.batch_size <= 256,
            "learning_rate": 0 < self.learning_rate <= 1,
            "errors_per_region": 1 <= self.errors_per_region <= 32,
            "bad_dice": 0 < self.bad_dice < 1,
            "target_width": 0 <= self.target_width <= 0.5,
            "model_dropout": 0 <= self.model_dropout <= 1,
            "validation_fraction": 0 < self.validation_fraction < 1,
            "seed": 0 <= self.seed < 2**32,
            "channels": 1 <= len(self.channels) <= 6 and all(1 <= c <= 512 for c in self.channels),
        }
        if self.grid is not None:
            checks["grid"] = grid_fits(self.grid, self.channels)
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid learned verifier options: {', '.join(bad)} ({self})")

    @property
    def effective_steps(self) -> int:
        """The steps trained: ``steps``, or a quarter of them with ``quick``."""
        return max(1, self.steps // 4) if self.quick else self.steps


def grid_fits(grid: Sequence[int], channels: Sequence[int]) -> bool:
    """2 or 3 axes, each a multiple of the networks' total stride ``2^len(channels)`` and at
    least twice it (instance norm needs more than one voxel at the last stage), at most 256."""
    stride = 2 ** len(channels)
    return len(grid) in (2, 3) and all(2 * stride <= g <= 256 and g % stride == 0 for g in grid)


def _network(n_in: int, grid: Sequence[int], channels: Sequence[int]) -> Classifier:
    return Classifier(
        in_shape=(n_in, *grid), classes=1, channels=tuple(channels),
        strides=(2,) * len(channels), num_res_units=1,
    )  # fmt: skip


class LearnedVerifier:
    """P(label wrong) per structure and P(A better than B) per structure; module docstring."""

    def __init__(
        self,
        *,
        label_map: Mapping[str, int],
        image_channels: int,
        grid: Sequence[int],
        options: LearnedVerifierOptions,
        validation: Mapping[str, Any] | None = None,
        n_trusted: int = 0,
        with_model: bool = False,
    ) -> None:
        self.label_map = dict(label_map)
        self.image_channels = int(image_channels)
        self.grid = tuple(int(g) for g in grid)
        self.options = options
        self.single = _network(in_channels(image_channels, 1), self.grid, options.channels)
        self.pair = _network(in_channels(image_channels, 2), self.grid, options.channels)
        self.validation: dict[str, Any] = dict(validation or {})
        self.n_trusted = n_trusted
        self.with_model = with_model
        """True when it was trained with model maps; without, it must be scored without."""

    @property
    def spatial_dims(self) -> int:
        return len(self.grid)

    def _logits(self, net: torch.nn.Module, inputs: Sequence[np.ndarray]) -> np.ndarray:
        net.eval()
        with torch.no_grad():
            return net(torch.from_numpy(np.stack(inputs)))[:, 0].numpy().astype(np.float64)

    def score(
        self,
        image: np.ndarray,
        label: np.ndarray,
        *,
        model_maps: Mapping[str, np.ndarray] | None = None,
        structures: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """P(wrong) of each structure's mask in ``label`` (``image``: ``(C, *spatial)``);
        ``structures`` limits it to some (default: every structure of the label map)."""
        image, label = self._check(image, label)
        names = list(self.label_map if structures is None else structures)
        inputs = [
            network_input(image, [label == self.label_map[name]],
                          None if model_maps is None else model_maps[name], grid=self.grid)
            for name in names
        ]  # fmt: skip
        logits = self._logits(self.single, inputs)
        return {name: _sigmoid(z) for name, z in zip(names, logits, strict=True)}

    def prefer(
        self,
        image: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        *,
        model_maps: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, float]:
        """P(``a`` is the better label) per structure; 0.5 where the two masks are equal."""
        image, a = self._check(image, a)
        b = np.asarray(b)
        names = [n for n, v in self.label_map.items() if not np.array_equal(a == v, b == v)]
        out = dict.fromkeys(self.label_map, 0.5)
        if not names:
            return out
        inputs = []
        for name in names:
            v = self.label_map[name]
            model = None if model_maps is None else model_maps[name]
            inputs.append(network_input(image, [a == v, b == v], model, grid=self.grid))
            inputs.append(network_input(image, [b == v, a == v], model, grid=self.grid))
        logits = self._logits(self.pair, inputs)
        for k, name in enumerate(names):
            out[name] = _sigmoid((logits[2 * k] - logits[2 * k + 1]) / 2)
        return out

    def _check(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image, label = np.asarray(image, dtype=np.float32), np.asarray(label)
        if image.ndim != self.spatial_dims + 1 or image.shape[0] != self.image_channels:
            raise ValueError(
                f"image must be (channels={self.image_channels}, *{self.spatial_dims}-D), "
                f"got {image.shape}"
            )
        if label.shape != image.shape[1:]:
            raise ValueError(f"label shape {label.shape} does not match image {image.shape[1:]}")
        return image, label

    def meta(self) -> dict[str, Any]:
        """Plain-JSON description stored with the weights."""
        options = dataclasses.asdict(self.options)
        options["channels"] = list(self.options.channels)
        options["grid"] = None if self.options.grid is None else list(self.options.grid)
        return {
            "kind": CHECKPOINT_KIND,
            "label_map": self.label_map,
            "image_channels": self.image_channels,
            "grid": list(self.grid),
            "options": options,
            "validation": {k: v for k, v in self.validation.items() if k != "cases"},
            "n_trusted": self.n_trusted,
            "with_model": self.with_model,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Both networks' weights, keys prefixed ``single.`` / ``pair.``."""
        return {f"single.{k}": v for k, v in self.single.state_dict().items()} | {
            f"pair.{k}": v for k, v in self.pair.state_dict().items()
        }

    def save(self, path: str | Path, **extra_meta: Any) -> str:
        """Publish atomically as an EMLabel checkpoint; returns its sha256."""
        return publish_checkpoint(path, self.state_dict(), self.meta() | extra_meta)

    @classmethod
    def load(cls, path: str | Path) -> LearnedVerifier:
        """Read a checkpoint written by :meth:`save` (safely: tensors and plain data only);
        :class:`~emlabel.checkpoints.CheckpointError` (a 422) for anything else."""
        state, meta = load_checkpoint(path)
        if meta.get("kind") != CHECKPOINT_KIND:
            raise CheckpointError(f"{Path(path).name} is not a learned verifier checkpoint")
        try:
            raw = dict(meta["options"])
            raw["channels"] = tuple(raw["channels"])
            raw["grid"] = None if raw.get("grid") is None else tuple(raw["grid"])
            verifier = cls(
                label_map=meta["label_map"], image_channels=int(meta["image_channels"]),
                grid=meta["grid"], options=LearnedVerifierOptions(**raw),
                validation=meta.get("validation"), n_trusted=int(meta.get("n_trusted", 0)),
                with_model=bool(meta.get("with_model", False)),
            )  # fmt: skip
            for prefix, net in (("single.", verifier.single), ("pair.", verifier.pair)):
                net.load_state_dict(
                    {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                )
                net.eval()
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"{Path(path).name} does not hold a learned verifier this version reads ({e}); "
                "train 'verifier' again"
            ) from e
        return verifier


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def train_learned_verifier(
    trusted: Sequence[TrustedLabel],
    *,
    label_map: Mapping[str, int],
    options: LearnedVerifierOptions | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> LearnedVerifier:
    """Train both heads on ``trusted`` labels (module docstring); ValueError if there are none."""
    options = options or LearnedVerifierOptions()
    options.validate()
    if not trusted:
        raise ValueError("the learned verifier needs at least one trusted label")
    image_channels, spatial_dims = trusted[0].image.shape[0], trusted[0].label.ndim
    for t in trusted:
        if t.image.shape[0] != image_channels or t.label.shape != t.image.shape[1:]:
            raise ValueError("trusted labels must share channels and match their images")
    grid = options.grid or default_grid(spatial_dims)
    if len(grid) != spatial_dims or not grid_fits(grid, options.channels):
        raise ValueError(
            f"grid {tuple(grid)} does not fit {spatial_dims}-D data and "
            f"{len(options.channels)} network stages"
        )
    if not label_map:
        raise ValueError("the learned verifier needs at least one structure in the label map")
    rng = np.random.default_rng(options.seed)
    torch.manual_seed(options.seed)
    order = rng.permutation(len(trusted))
    n_val = min(len(trusted) - 1, max(1, round(options.validation_fraction * len(trusted))))
    held_out = len(trusted) >= MIN_HELD_OUT_TRUSTED
    val_idx = sorted(order[:n_val].tolist()) if held_out else list(range(len(trusted)))
    train_idx = sorted(order[n_val:].tolist()) if held_out else list(range(len(trusted)))
    train_regions = [r for i in train_idx for r in regions(trusted[i], label_map)]

    verifier = LearnedVerifier(
        label_map=label_map, image_channels=image_channels, grid=grid, options=options,
        n_trusted=len(trusted), with_model=any(t.model_maps is not None for t in trusted),
    )  # fmt: skip
    params = [*verifier.single.parameters(), *verifier.pair.parameters()]
    optimiser = torch.optim.AdamW(params, lr=options.learning_rate, weight_decay=1e-4)
    verifier.single.train()
    verifier.pair.train()
    for step in range(options.effective_steps):
        xs, ys, xp, yp = _batch(train_regions, rng, options, grid, image_channels)
        n_wrong = float(ys.sum())
        pos_weight = torch.tensor(min(5.0, max(0.2, (len(ys) - n_wrong) / max(n_wrong, 1.0))))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            verifier.single(xs)[:, 0], ys, pos_weight=pos_weight
        )
        if len(yp):
            loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(
                verifier.pair(xp)[:, 0], yp
            )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if on_step is not None:
            on_step(step, float(loss))
    verifier.single.eval()
    verifier.pair.eval()
    verifier.validation = _validate(
        verifier, [trusted[i] for i in val_idx], val_idx, held_out=held_out,
        rng=np.random.default_rng(options.seed + 1),
    )  # fmt: skip
    return verifier


def wrongness(dice: float, options: LearnedVerifierOptions) -> float:
    """The single head's target: ``sigmoid((bad_dice - Dice) / target_width)``, a soft step
    at ``bad_dice`` (hard 0/1 when ``target_width`` is 0). Soft targets keep the order of
    labels on either side of the threshold, which the AUROC of subtle errors depends on."""
    if options.target_width == 0:
        return float(dice < options.bad_dice)
    return _sigmoid((options.bad_dice - dice) / options.target_width)


def _batch(
    pool: Sequence[Region],
    rng: np.random.Generator,
    options: LearnedVerifierOptions,
    grid: Sequence[int],
    image_channels: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    singles, single_y, pairs, pair_y = [], [], [], []
    for k in rng.integers(len(pool), size=max(1, options.batch_size // 4)):
        region = pool[int(k)]
        found = candidates(region, rng, n_errors=options.errors_per_region)
        use_map = region.model_map is not None and rng.random() >= options.model_dropout
        model = region.model_map if use_map else None
        for c in found:
            singles.append(network_input(region.image, [c.mask], model, grid=grid))
            single_y.append(wrongness(c.dice, options))
        chosen = sample_pairs(found, rng)
        for j in rng.permutation(len(chosen))[:4]:
            a, b = chosen[int(j)]
            pairs.append(network_input(region.image, [a.mask, b.mask], model, grid=grid))
            pair_y.append(float(a.dice > b.dice))
    xs = _augment(np.stack(singles), rng, image_channels)
    n_pair_channels = xs.shape[1] + 1  # one more mask
    xp = (
        _augment(np.stack(pairs), rng, image_channels)
        if pairs
        else torch.zeros((0, n_pair_channels, *grid))
    )
    return xs, torch.tensor(single_y), xp, torch.tensor(pair_y)


def _augment(x: np.ndarray, rng: np.random.Generator, image_channels: int) -> torch.Tensor:
    """Random flips of the whole batch and a per-example intensity jitter of the image."""
    t = torch.from_numpy(x)
    axes = [2 + a for a in range(t.ndim - 2) if rng.random() < 0.5]
    if axes:
        t = torch.flip(t, dims=axes)
    shape = (t.shape[0], 1) + (1,) * (t.ndim - 2)
    scale = torch.from_numpy(rng.uniform(0.9, 1.1, size=shape).astype(np.float32))
    offset = torch.from_numpy(rng.uniform(-0.1, 0.1, size=shape).astype(np.float32))
    t = t.clone()
    t[:, :image_channels] = t[:, :image_channels] * scale + offset
    return t


def _validate(
    verifier: LearnedVerifier,
    trusted: Sequence[TrustedLabel],
    indices: Sequence[int],
    *,
    held_out: bool,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """AUROC and pairwise accuracy on candidates of ``trusted`` (module docstring).

    ``cases`` (not saved) holds each candidate as a full label map, so that another verifier
    can be scored on exactly the same cases (:mod:`.selection`).
    """
    from sklearn.metrics import roc_auc_score

    bad_dice = verifier.options.bad_dice
    scores, wrong, pair_hits, cases = [], [], [], []
    for t, index in zip(trusted, indices, strict=True):
        for region in regions(t, verifier.label_map):
            value = verifier.label_map[region.structure]
            found = candidates(region, rng, n_errors=verifier.options.errors_per_region)
            for c in found:
                full = _paste(t.label, region, c, value)
                p = verifier.score(
                    t.image, full, model_maps=t.model_maps, structures=[region.structure]
                )[region.structure]
                scores.append(p)
                wrong.append(c.dice < bad_dice)
                cases.append({"trusted_index": index, "structure": region.structure,
                              "label": full, "wrong": c.dice < bad_dice, "learned": p,
                              "kind": c.kind})  # fmt: skip
            for a, b in sample_pairs(found, rng)[:4]:
                fa, fb = _paste(t.label, region, a, value), _paste(t.label, region, b, value)
                p = verifier.prefer(t.image, fa, fb, model_maps=t.model_maps)[region.structure]
                pair_hits.append((p > 0.5) == (a.dice > b.dice))
    both = 0 < sum(wrong) < len(wrong)
    return {
        "auroc": float(roc_auc_score(wrong, scores)) if both else float("nan"),
        "pair_accuracy": float(np.mean(pair_hits)) if pair_hits else float("nan"),
        "n_labels": len(scores),
        "n_wrong": int(sum(wrong)),
        "n_pairs": len(pair_hits),
        "held_out_images": len(trusted) if held_out else 0,
        "note": "held-out trusted labels"
        if held_out
        else "fresh corruptions of the training labels (fewer than 5 trusted: optimistic)",
        "cases": cases,
    }


def _paste(label: np.ndarray, region: Region, candidate: Candidate, value: int) -> np.ndarray:
    """``label`` with the region's structure replaced by ``candidate`` (freed voxels -> 0)."""
    full = np.array(label, copy=True)
    view = full[region.box]
    view[region.truth & ~candidate.mask] = 0
    view[candidate.mask] = value
    return full
