"""AIDE (cross-model label self-correction): schedules, losses, augmentation undo, filtering,
global correction, the cross-assigned trainer, task standardization, 2D/3D smoke runs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from emlabel.methods.aide import (
    AIDEOptions,
    AIDETrainer,
    AugmentParams,
    apply_augment,
    confidence_weight,
    consistency_loss,
    consistency_target,
    filter_scores,
    global_correction,
    is_correction_epoch,
    label_dice,
    ramp,
    sample_augment,
    seg_loss_per_sample,
    sharpen,
    split_clean_noisy,
    standardize_domain_adaptation,
    standardize_semi_supervised,
    undo_augment,
)
from emlabel.methods.aide.precision import resolve_precision
from emlabel.methods.aide.trainer import _batch_dice
from emlabel.nets import build_unet


class ThresholdNet(torch.nn.Module):
    """Two-class logits (-(a x + b), a x + b): foreground where x > 0.5 at the initial a, b."""

    def __init__(self, a: float = 10.0, b: float = -5.0) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))
        self.b = torch.nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.a * x[:, :1] + self.b
        return torch.cat([-z, z], dim=1)


class ConstantNet(torch.nn.Module):
    """Predicts foreground everywhere (one trainable bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.b = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.zeros_like(x[:, :1]) + self.b
        return torch.cat([-z, z], dim=1)


def disks(n: int, size: int, *, dims: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright balls on a noisy dark background and noisy labels (shifted, resized balls)."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * dims, indexing="ij")
    images, labels = [], []
    for _ in range(n):
        centre = size / 2 + (torch.rand(dims, generator=g) - 0.5) * size / 4
        radius = size / 5 + float(torch.rand(1, generator=g)) * size / 10
        d2 = sum((ax - c) ** 2 for ax, c in zip(axes, centre, strict=True))
        clean = (d2 < radius**2).float()
        images.append(clean + 0.1 * torch.randn(clean.shape, generator=g))
        shift = (torch.rand(dims, generator=g) - 0.5) * radius
        noisy_r = radius * (0.7 + 0.6 * float(torch.rand(1, generator=g)))
        nd2 = sum((ax - c) ** 2 for ax, c in zip(axes, centre + shift, strict=True))
        labels.append((nd2 < noisy_r**2).long())
    return torch.stack(images)[:, None], torch.stack(labels)


def smooth_image(h: int, w: int) -> torch.Tensor:
    """A smooth, asymmetric 2D test image ``[1, 1, h, w]``."""
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    blob = torch.exp(-((y - 0.35 * h) ** 2 + (x - 0.6 * w) ** 2) / (2 * 6.0**2))
    return (blob + 0.01 * x + 0.02 * y)[None, None]


def central_disk(h: int, w: int, radius: float) -> torch.Tensor:
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    return ((y - (h - 1) / 2) ** 2 + (x - (w - 1) / 2) ** 2) < radius**2


# --- options and schedules -------------------------------------------------------------------


def test_options_defaults_follow_the_spec_and_validation_names_the_field() -> None:
    o = AIDEOptions()
    assert (o.batch_size, o.k_augment, o.max_rotation_deg, o.flip_prob) == (4, 4, 60.0, 0.5)
    assert (o.sharpen_temperature, o.filter_ratio, o.consistency_weight) == (1.0, 0.5, 10.0)
    assert (o.warmup_epochs, o.correction_every, o.correction_fraction) == (20, 10, 0.25)
    assert (o.learning_rate, o.lr_step, o.lr_gamma, o.max_epochs) == (1e-4, 30, 0.5, 100)
    o.validate()
    with pytest.raises(ValueError, match="filter_ratio"):
        AIDEOptions(filter_ratio=1.5).validate()
    with pytest.raises(ValueError, match="sharpen_temperature"):
        AIDEOptions(sharpen_temperature=0.0).validate()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.seed = 1  # type: ignore[misc]


def test_scaled_schedule_is_the_specs_at_100_epochs_and_shrinks_with_the_training() -> None:
    spec = AIDEOptions()
    assert spec.scaled_schedule(100) == spec
    short = AIDEOptions(learning_rate=1e-3).scaled_schedule(30)
    assert (short.max_epochs, short.warmup_epochs, short.correction_every, short.lr_step) == (
        30, 6, 3, 9
    )  # fmt: skip
    assert short.learning_rate == 1e-3  # the rest is left as it was
    assert AIDEOptions().scaled_schedule(2).correction_every == 1  # never 0


def test_the_apps_aide_defaults_follow_the_apps_settings_and_a_requests_epochs(tmp_path) -> None:
    from emlabel.learners.aide import default_aide_options
    from emlabel.monailabel.aide import AIDETrainer3D
    from emlabel.settings import AppSettings

    settings = AppSettings(max_epochs=30, learning_rate=2e-3)
    o = default_aide_options(settings)
    assert (o.learning_rate, o.max_epochs, o.warmup_epochs, o.train_augment) == (2e-3, 30, 6, True)
    task = AIDETrainer3D(model_path=str(tmp_path / "aide.pt"), settings=settings,
                         segmentation_model_path=str(tmp_path / "s.pt"), description="t")  # fmt: skip
    assert task.config()["warmup_epochs"] == 6
    asked = task.parse_request({"max_epochs": 10})
    assert (asked.max_epochs, asked.warmup_epochs, asked.correction_every) == (10, 2, 1)
    kept = task.parse_request({"max_epochs": 10, "warmup_epochs": 7})
    assert (kept.warmup_epochs, kept.correction_every) == (7, 1)


def test_ramp_is_quadratic_and_saturates() -> None:
    assert ramp(0, 20) == 0.0
    assert ramp(10, 20) == pytest.approx(0.25)
    assert ramp(5, 20) == pytest.approx(1 / 16)
    assert ramp(20, 20) == 1.0
    assert ramp(57, 20) == 1.0
    assert ramp(3, 0) == 1.0


def test_correction_epochs_are_the_warmup_then_every_tenth() -> None:
    epochs = [e for e in range(1, 61) if is_correction_epoch(e, 20, 10)]
    assert epochs == [*range(1, 21), 30, 40, 50, 60]
    with pytest.raises(ValueError):
        is_correction_epoch(0, 20, 10)


def test_correction_start_epoch_delays_the_first_correction() -> None:
    epochs = [e for e in range(1, 41) if is_correction_epoch(e, 20, 10, start=5)]
    assert epochs == [*range(5, 21), 30, 40]


# --- losses -----------------------------------------------------------------------------------


def test_seg_loss_matches_a_hand_computation() -> None:
    # One 2x2 image, logits (bg, fg) per pixel; label: pixels 0 and 1 foreground.
    pairs = [(0.0, 2.0), (1.0, 0.0), (0.0, 0.0), (0.5, -1.0)]
    y = [1, 1, 0, 0]
    logits = torch.tensor([[[p[0] for p in pairs], [p[1] for p in pairs]]]).view(1, 2, 2, 2)
    target = torch.tensor(y).view(1, 2, 2)
    ce, p_fg = [], []
    for (bg, fg), lab in zip(pairs, y, strict=True):
        z = math.log(math.exp(bg) + math.exp(fg))
        ce.append(z - (fg if lab else bg))
        p_fg.append(math.exp(fg - z))
    inter = sum(p * t for p, t in zip(p_fg, y, strict=True))
    expected = sum(ce) / 4 + 1 - (2 * inter + 1) / (sum(p_fg) + sum(y) + 1)
    got = seg_loss_per_sample(logits, target)
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(expected, abs=1e-6)

    # Per sample: a batch of two gives each sample's own loss.
    other_logits = torch.randn(1, 2, 2, 2)
    other_target = torch.tensor([[[0, 1], [1, 1]]])
    both = seg_loss_per_sample(torch.cat([logits, other_logits]), torch.cat([target, other_target]))
    assert float(both[0]) == pytest.approx(expected, abs=1e-6)
    assert float(both[1]) == pytest.approx(
        float(seg_loss_per_sample(other_logits, other_target)[0]), abs=1e-6
    )


def test_seg_loss_averages_dice_over_foreground_classes() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    p = torch.softmax(logits, dim=1)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none").mean(dim=(1, 2))
    dice_terms = []
    for c in (1, 2):
        y = (target == c).float()
        pc = p[:, c]
        dice_terms.append(1 - (2 * (pc * y).sum((1, 2)) + 1) / (pc.sum((1, 2)) + y.sum((1, 2)) + 1))
    expected = ce + (dice_terms[0] + dice_terms[1]) / 2
    assert torch.allclose(seg_loss_per_sample(logits, target), expected, atol=1e-6)


def test_consistency_loss_is_the_weighted_mean_squared_error() -> None:
    p = torch.tensor([[[[0.9]], [[0.1]]], [[[0.2]], [[0.8]]]])  # [2, 2, 1, 1]
    q = torch.tensor([[[[0.5]], [[0.5]]], [[[0.2]], [[0.8]]]])
    w = torch.tensor([[[0.5]], [[1.0]]])
    expected = (0.5 * 0.4**2 + 0.5 * 0.4**2 + 0.0 + 0.0) / 4
    assert float(consistency_loss(p, q, w)) == pytest.approx(expected)
    assert float(consistency_loss(p, q, torch.zeros_like(w))) == 0.0
    assert float(consistency_loss(p[:0], q[:0], w[:0])) == 0.0


# --- consistency target: weight, sharpening, augmentation undo --------------------------------


def test_confidence_weight_is_one_minus_4_qbg_qfg_for_two_classes() -> None:
    q_fg = torch.tensor([0.5, 1.0, 0.0, 0.8, 0.3]).view(1, 5)
    q = torch.stack([1 - q_fg, q_fg], dim=1)  # [1, 2, 5]
    w = confidence_weight(q)
    assert torch.allclose(w, 1 - 4 * (1 - q_fg) * q_fg, atol=1e-6)
    assert float(w[0, 0]) == pytest.approx(0.0, abs=1e-7)
    assert float(w[0, 1]) == 1.0 and float(w[0, 2]) == 1.0
    # Multi-class generalisation: 0 at the uniform distribution, 1 when one-hot.
    q3 = torch.tensor([[1 / 3, 1.0], [1 / 3, 0.0], [1 / 3, 0.0]])[None]  # [1, 3, 2]
    assert torch.allclose(confidence_weight(q3), torch.tensor([[0.0, 1.0]]), atol=1e-6)


def test_sharpening_follows_the_formula_and_t1_is_identity() -> None:
    q = torch.tensor([0.7, 0.3]).view(1, 2, 1)
    assert torch.equal(sharpen(q, 1.0), q)
    s = sharpen(q, 0.5)
    assert float(s[0, 0, 0]) == pytest.approx(0.49 / (0.49 + 0.09))


def test_flip_alone_is_exact_and_undone_exactly() -> None:
    x = torch.randn(3, 2, 8, 10)
    params = AugmentParams(angles_deg=torch.zeros(3), flips=torch.tensor([True, False, True]))
    aug = apply_augment(x, params)
    assert torch.equal(aug[0], x[0].flip(-1)) and torch.equal(aug[1], x[1])
    assert torch.equal(undo_augment(aug, params), x)


def test_rotation_is_in_pixel_units_and_in_the_axial_plane() -> None:
    params = AugmentParams(angles_deg=torch.tensor([90.0]), flips=torch.tensor([False]))
    x2 = torch.randn(1, 1, 6, 6)
    assert torch.allclose(apply_augment(x2, params), torch.rot90(x2, -1, dims=(2, 3)), atol=1e-5)
    x3 = torch.randn(1, 1, 6, 6, 4)  # rotates axes X, Y; Z untouched
    assert torch.allclose(apply_augment(x3, params), torch.rot90(x3, -1, dims=(2, 3)), atol=1e-5)
    # A centred disk in a non-square image stays (almost) the same: no shear from the aspect.
    h, w = 32, 48
    d = central_disk(h, w, 8.0).float()[None, None]
    r = apply_augment(d, AugmentParams(torch.tensor([37.0]), torch.tensor([False])))
    assert float((r - d).abs().sum()) < 0.1 * float(d.sum())


def test_undo_maps_an_augmented_prediction_back_onto_the_original_grid() -> None:
    h = w = 48
    x = smooth_image(h, w).repeat(6, 1, 1, 1)
    params = AugmentParams(
        angles_deg=torch.tensor([-60.0, -33.0, 0.0, 12.5, 45.0, 59.0]),
        flips=torch.tensor([True, False, True, True, False, False]),
    )
    disk = central_disk(h, w, 20.0)
    back = undo_augment(apply_augment(x, params), params)
    err = (back - x).abs()[:, 0][:, disk]
    assert float(err.max()) < 0.03
    # The check can fail: undoing with the wrong direction leaves large errors.
    wrong = AugmentParams(angles_deg=-params.angles_deg, flips=params.flips)
    bad = (undo_augment(apply_augment(x, params), wrong) - x).abs()[:, 0][:, disk]
    assert float(bad.max()) > 0.2


def test_consistency_target_of_a_pointwise_net_lands_on_the_original_grid() -> None:
    h = w = 40
    x = smooth_image(h, w).repeat(2, 1, 1, 1) * 4 - 2
    net = ThresholdNet(a=1.0, b=0.0)  # pointwise, so the undone predictions equal f(x)
    options = AIDEOptions(k_augment=4)
    q, wmap = consistency_target(net, x, k=4, rng=torch.Generator().manual_seed(0), options=options)
    assert q.shape == (2, 2, h, w) and wmap.shape == (2, h, w)
    assert torch.allclose(q.sum(dim=1), torch.ones(2, h, w), atol=1e-5)
    expected = torch.softmax(net(x), dim=1).detach()
    disk = central_disk(h, w, 16.0)
    assert float((q - expected).abs()[:, :, disk].max()) < 0.02
    assert not q.requires_grad and float(wmap.min()) >= 0.0 and float(wmap.max()) <= 1.0


class ShiftNet(torch.nn.Module):
    """Logits of the neighbour to the right: not flip-equivariant, so a flipped copy's undone
    prediction differs from the un-augmented one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.roll(x[:, :1], shifts=1, dims=-1) * 3.0
        return torch.cat([-z, z], dim=1)


def test_identity_copy_is_the_given_logits_and_only_k_minus_1_copies_are_drawn() -> None:
    x = smooth_image(12, 16).repeat(3, 1, 1, 1) * 4 - 2
    net = ShiftNet()
    options = AIDEOptions(max_rotation_deg=0.0, flip_prob=1.0)  # every drawn copy: a flip
    q, _ = consistency_target(net, x, k=2, rng=torch.Generator().manual_seed(0),
                              options=options, identity_logits=net(x))  # fmt: skip
    flipped = torch.softmax(net(x.flip(-1)).flip(-1), dim=1)
    expected = 0.5 * (torch.softmax(net(x), dim=1) + flipped)
    assert torch.allclose(q, expected, atol=1e-6)
    # without the identity copy both copies are flips: a different target
    q_spec, _ = consistency_target(net, x, k=2, rng=torch.Generator().manual_seed(0),
                                   options=options)  # fmt: skip
    assert torch.allclose(q_spec, flipped, atol=1e-6) and not torch.allclose(q_spec, expected)
    # one generator draw per drawn copy: k - 1 copies leave the generator further back
    g_id, g_spec = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    consistency_target(net, x, k=4, rng=g_id, options=options, identity_logits=net(x))
    sample_augment(3 * 3, max_rotation_deg=0.0, flip_prob=1.0, rng=g_spec)
    assert torch.equal(torch.rand(4, generator=g_id), torch.rand(4, generator=g_spec))


def test_bfloat16_targets_and_predictions_stay_close_to_float32() -> None:
    torch.manual_seed(0)
    net = build_unet(spatial_dims=2, out_channels=2, channels=(4, 8))
    x = smooth_image(32, 32).repeat(2, 1, 1, 1)
    o = AIDEOptions()
    q32, _ = consistency_target(net, x, k=3, rng=torch.Generator().manual_seed(0), options=o)
    q16, _ = consistency_target(net, x, k=3, rng=torch.Generator().manual_seed(0), options=o,
                                  precision="bfloat16")  # fmt: skip
    assert q16.dtype == torch.float32 and float((q16 - q32).abs().max()) < 0.02
    assert float((q16 - q32).abs().max()) > 0  # the passes did run in bfloat16
    assert resolve_precision("auto", torch.device("cpu")) in ("float32", "bfloat16")
    with pytest.raises(ValueError, match="valid: float32, bfloat16, auto"):
        resolve_precision("half", torch.device("cpu"))
    with pytest.raises(ValueError, match="no_grad_precision"):
        AIDEOptions(no_grad_precision="half").validate()


def test_batch_dice_equals_the_per_item_label_dice() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 9, 9, generator=g)
    target = torch.randint(0, 3, (4, 9, 9), generator=g)
    target[0] = 0  # class 1 and 2 absent from the target ...
    logits[0, 0] += 100.0  # ... and from the prediction: Dice 1 for both classes
    pred = logits.argmax(dim=1)
    expected = sum(label_dice(pred[i], target[i], 3) for i in range(4)) / 4
    assert _batch_dice(logits, target) == pytest.approx(expected, abs=1e-12)


def test_a_trainer_with_the_apps_speed_options_trains_and_corrects() -> None:
    images, labels = disks(8, 32)
    options = AIDEOptions(batch_size=4, k_augment=3, warmup_epochs=1, learning_rate=1e-3,
                          identity_copy=True, no_grad_precision="bfloat16", max_epochs=3)  # fmt: skip
    trainer = AIDETrainer(
        lambda: build_unet(spatial_dims=2, out_channels=2, channels=(4, 8)),
        images,
        labels,
        options=options,
    )
    history = trainer.fit()
    assert len(history) == 3 and all(math.isfinite(h.loss_f1) for h in history)
    assert trainer.no_grad_precision == "bfloat16"
    assert history[-1].ramp > 0  # the consistency term (with its targets) was in the loss


def test_pixels_a_rotated_copy_did_not_see_do_not_vote_in_the_consistency_target() -> None:
    h = w = 40
    x = torch.zeros(3, 1, h, w)  # a background image
    net = ThresholdNet()  # confident background everywhere: logits (5, -5), p_fg = sigmoid(-10)
    options = AIDEOptions(k_augment=4, max_rotation_deg=60.0)
    q, wmap = consistency_target(net, x, k=4, rng=torch.Generator().manual_seed(1), options=options)
    p_fg = float(torch.sigmoid(torch.tensor(-10.0)))
    unseen = wmap == 0  # no copy saw these corner pixels: uniform target, weight 0
    assert float(unseen.float().mean()) < 0.05
    assert torch.allclose(q[:, 1][unseen], torch.tensor(0.5))
    # every pixel some copy saw keeps the network's own prediction (zero-padded logits
    # averaged in as uniform distributions would raise q_fg towards 0.5 at the corners)
    assert float((q[:, 1][~unseen] - p_fg).abs().max()) < 0.05  # edge ring: blended logits
    assert float((q[:, 1][~unseen] - p_fg).abs().median()) < 1e-4
    assert float(wmap[~unseen].median()) > 0.97


# --- filtering and global correction ----------------------------------------------------------


def test_filter_keeps_the_smallest_counterpart_losses_as_clean() -> None:
    losses = torch.tensor([0.9, 0.1, 0.5, 0.3])
    clean, noisy = split_clean_noisy(losses, 0.5)
    assert clean.tolist() == [1, 3] and noisy.tolist() == [0, 2]
    clean, noisy = split_clean_noisy(losses, 0.25)
    assert clean.tolist() == [1] and noisy.tolist() == [0, 2, 3]
    clean, noisy = split_clean_noisy(losses, 1.0)
    assert clean.tolist() == [0, 1, 2, 3] and noisy.tolist() == []


def test_ce_filter_criterion_ranks_by_label_quality_where_seg_ranks_by_emptiness() -> None:
    # sample 0: an empty label, predicted empty with confidence (a correct label);
    # sample 1: a 4x4 object whose label misses half of it (a noisy label)
    obj = torch.zeros(2, 16, 16, dtype=torch.bool)
    obj[1, 6:10, 6:10] = True
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[1, 6:8, 6:10] = 1
    z = torch.where(obj, 2.0, -2.0)
    logits = torch.stack([-z, z], dim=1)  # correct predictions, p = 0.98 on every pixel
    seg = filter_scores(logits, labels, "seg")
    ce = filter_scores(logits, labels, "ce")
    assert torch.allclose(seg, seg_loss_per_sample(logits, labels))
    # Seg: the empty label's soft Dice term is ~1, so the correct empty label looks noisier
    assert float(seg[0]) > float(seg[1])
    # CE: the mislabelled half of the object makes sample 1 the noisier one
    assert float(ce[1]) > float(ce[0])
    clean, noisy = split_clean_noisy(ce, 0.5)
    assert clean.tolist() == [0] and noisy.tolist() == [1]
    with pytest.raises(ValueError, match="criterion"):
        filter_scores(logits, labels, "dice")
    with pytest.raises(ValueError, match="filter_criterion"):
        AIDEOptions(filter_criterion="dice").validate()


def _correction_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """8 items whose predictions (ThresholdNet) are an 8x8 square, except item 0 (empty).

    Labels keep the first m rows of the square, so Dice = 16 m / (64 + 8 m) grows with m.
    """
    rows = [8, 6, 1, 3, 2, 8, 5, 4]
    images = torch.zeros(8, 1, 16, 16)
    labels = torch.zeros(8, 16, 16, dtype=torch.long)
    for i, m in enumerate(rows):
        if i > 0:
            images[i, 0, 4:12, 4:12] = 1.0
        labels[i, 4 : 4 + m, 4:12] = 1
    square = torch.zeros(16, 16, dtype=torch.long)
    square[4:12, 4:12] = 1
    hq = torch.zeros(8, dtype=torch.bool)
    hq[3] = True
    return images, labels, hq, square


def test_correction_replaces_the_lowest_fraction_skipping_empty_and_hq() -> None:
    images, labels, hq, square = _correction_case()
    before = labels.clone()
    # Ranking: 0 (empty prediction, Dice 0), 2 (m=1), 4 (m=2), 3 (m=3, HQ), 7 (m=4), ...
    corrections = global_correction(ThresholdNet(), images, labels, hq_mask=hq, fraction=0.5)
    assert [c.index for c in corrections] == [2, 4]
    assert corrections[0].dice_before == pytest.approx(16 / 72)
    assert corrections[1].dice_before == pytest.approx(32 / 80)
    assert all(torch.equal(c.new_label, square) for c in corrections)
    assert torch.equal(labels, before)  # proposals only
    corrections = global_correction(ThresholdNet(), images, labels, hq_mask=hq, fraction=0.25)
    assert [c.index for c in corrections] == [2]


def test_keep_largest_component_before_correction() -> None:
    images = torch.zeros(1, 1, 16, 16)
    images[0, 0, 1:3, 1:3] = 1.0
    images[0, 0, 6:14, 6:14] = 1.0
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    hq = torch.zeros(1, dtype=torch.bool)
    (corr,) = global_correction(
        ThresholdNet(), images, labels, hq_mask=hq, fraction=1.0, keep_largest_component=True
    )
    assert int(corr.new_label.sum()) == 64 and int(corr.new_label[1:3, 1:3].sum()) == 0


# --- the trainer ------------------------------------------------------------------------------


def test_f1_learns_from_l2_and_f2_from_l1() -> None:
    images = torch.rand(4, 1, 8, 8)
    labels = torch.zeros(4, 8, 8, dtype=torch.long)
    options = AIDEOptions(batch_size=4, filter_ratio=1.0, learning_rate=0.05, warmup_epochs=5)
    trainer = AIDETrainer(lambda: torch.nn.Conv2d(1, 2, 1), images, labels, options=options)
    trainer.labels1.fill_(0)  # L1: all background
    trainer.labels2.fill_(1)  # L2: all foreground
    fg1 = float(trainer.predict(images, network=1)[:, 1].mean())
    fg2 = float(trainer.predict(images, network=2)[:, 1].mean())
    trainer.train_epoch(0)  # one step per network
    assert float(trainer.predict(images, network=1)[:, 1].mean()) > fg1  # pulled to L2
    assert float(trainer.predict(images, network=2)[:, 1].mean()) < fg2  # pulled to L1


def test_network_k_ranks_against_its_training_target_and_writes_into_lk() -> None:
    images, _, _, _ = _correction_case()
    images[0, 0, 4:12, 4:12] = 1.0
    nets = iter([ThresholdNet(), ConstantNet()])  # f1: the square, f2: everything
    labels = torch.zeros(8, 16, 16, dtype=torch.long)
    options = AIDEOptions(batch_size=4, correction_fraction=1.0, warmup_epochs=2)
    trainer = AIDETrainer(lambda: next(nets), images, labels, options=options)
    square = (images[:, 0] > 0.5).long()
    trainer.labels2.copy_(square)  # f1's training target agrees with f1 everywhere
    updates = trainer.end_of_epoch(1)
    assert torch.equal(trainer.labels1, square)  # f1's predictions went into L1
    assert torch.equal(trainer.labels2, torch.ones_like(square))  # f2's into L2
    ones = [u for u in updates if u.network == 1]
    assert len(ones) == 8 and all(u.dice_before == 1.0 for u in ones)  # ranked against L2
    assert all(u.dice_new_vs_old == 0.0 for u in ones)  # replaced the empty L1 labels
    assert trainer.end_of_epoch(3) == []  # after warm-up, only every 10th epoch


def test_correction_gate_writes_only_what_the_counterpart_confirms() -> None:
    images, _, _, _ = _correction_case()
    images[0, 0, 4:12, 4:12] = 1.0
    square = (images[:, 0] > 0.5).long()
    partial = torch.zeros_like(square)
    partial[:, 4:7, 4:12] = 1  # 3 of the square's 8 rows
    for gate in (False, True):
        nets = iter([ThresholdNet(), ConstantNet()])  # f1: the square, f2: everything
        options = AIDEOptions(
            batch_size=4, correction_fraction=1.0, warmup_epochs=2, correction_gate=gate
        )
        trainer = AIDETrainer(lambda nets=nets: next(nets), images, partial, options=options)
        trainer.end_of_epoch(1)
        # f1's square: f2 (everything) finds it closer than the partial label (0.40 vs 0.17)
        assert torch.equal(trainer.labels1, square)
        if gate:
            # f2's "everything": f1 (the square) prefers the partial label (0.55 vs 0.40)
            assert torch.equal(trainer.labels2, partial)
            assert trainer.last_rejected == 8
        else:
            assert torch.equal(trainer.labels2, torch.ones_like(square))
            assert trainer.last_rejected == 0


def test_hq_labels_never_change_through_training_with_corrections() -> None:
    images, labels = disks(8, 24, seed=3)
    hq = torch.tensor([True, False] * 4)
    options = AIDEOptions(
        batch_size=4, k_augment=2, warmup_epochs=2, correction_fraction=1.0, learning_rate=1e-3
    )
    trainer = AIDETrainer(ThresholdNet, images, labels, hq_mask=hq, options=options)
    history = trainer.fit(3)
    assert [s.n_corrected for s in history][:2] != [0, 0]
    assert all(not hq[u.index] for u in trainer.updates)
    assert torch.equal(trainer.labels1[hq], labels[hq])
    assert torch.equal(trainer.labels2[hq], labels[hq])
    assert not torch.equal(trainer.labels1[~hq], labels[~hq])  # the LQ labels were corrected


def test_training_augmentation_moves_images_and_labels_together() -> None:
    images, labels = disks(4, 16, seed=2)
    options = AIDEOptions(batch_size=4, max_rotation_deg=0.0, flip_prob=1.0, train_augment=True)
    trainer = AIDETrainer(ThresholdNet, images, labels, options=options)
    x, y1, y2 = trainer._augment(images, labels, labels)
    assert torch.allclose(x, torch.flip(images, dims=(3,)))  # spatial axis FLIP_AXIS = 1
    assert torch.equal(y1, torch.flip(labels, dims=(2,))) and torch.equal(y1, y2)
    rotated = dataclasses.replace(options, max_rotation_deg=45.0)
    _, y, _ = AIDETrainer(ThresholdNet, images, labels, options=rotated)._augment(
        images, labels, labels
    )
    assert set(torch.unique(y).tolist()) <= {0, 1}  # still a label map after rotation


def test_predict_averages_both_nets_and_disagreement_is_one_minus_dice() -> None:
    images, labels = disks(4, 16, seed=1)
    options = AIDEOptions(batch_size=2)
    trainer = AIDETrainer(ThresholdNet, images, labels, options=options)
    probs = trainer.predict(images)
    assert probs.shape == (4, 2, 16, 16)
    assert torch.allclose(probs.sum(dim=1), torch.ones(4, 16, 16), atol=1e-5)
    assert torch.equal(trainer.disagreement(images), torch.zeros(4))
    with torch.no_grad():
        trainer.f2.b.fill_(50.0)  # f2 now predicts everything as foreground
    expected = [
        1 - label_dice((images[i, 0] > 0.5).long(), torch.ones(16, 16, dtype=torch.long), 2)
        for i in range(4)
    ]
    assert torch.allclose(trainer.disagreement(images), torch.tensor(expected))
    mean = trainer.predict(images)
    assert torch.allclose(
        mean, 0.5 * (trainer.predict(images, network=1) + trainer.predict(images, network=2))
    )


def test_smoke_2d_end_to_end() -> None:
    images, labels = disks(8, 32, seed=0)
    hq = torch.tensor([True, True] + [False] * 6)
    options = AIDEOptions(batch_size=4, k_augment=2, warmup_epochs=2, learning_rate=1e-3, seed=7)
    factory = lambda: build_unet(spatial_dims=2, out_channels=2, channels=(4, 8), num_res_units=0)  # noqa: E731
    trainer = AIDETrainer(factory, images, labels, hq_mask=hq, options=options)
    seen = []
    history = trainer.fit(3, on_epoch=seen.append)
    assert len(history) == 3 and seen == history
    assert [s.ramp for s in history] == [0.0, 0.25, 1.0]
    assert all(math.isfinite(s.loss_f1) and math.isfinite(s.loss_f2) for s in history)
    assert all(0.0 <= s.dice_f1 <= 1.0 and s.n_batches == 2 for s in history)
    assert torch.equal(trainer.labels1[hq], labels[hq]) and torch.equal(
        trainer.labels2[hq], labels[hq]
    )
    assert trainer.predict(images).shape == (8, 2, 32, 32)
    d = trainer.disagreement(images)
    assert d.shape == (8,) and bool(((d >= 0) & (d <= 1)).all())


def test_smoke_3d_end_to_end() -> None:
    images, labels = disks(4, 16, dims=3, seed=2)
    options = AIDEOptions(batch_size=2, k_augment=2, warmup_epochs=1, learning_rate=1e-3)
    factory = lambda: build_unet(spatial_dims=3, out_channels=2, channels=(4, 8), num_res_units=0)  # noqa: E731
    trainer = AIDETrainer(factory, images, labels, options=options)
    history = trainer.fit(2)
    assert len(history) == 2 and history[1].ramp == 1.0
    assert all(math.isfinite(s.loss_f1) and math.isfinite(s.loss_f2) for s in history)
    assert trainer.predict(images).shape == (4, 2, 16, 16, 16)
    assert trainer.labels1.shape == labels.shape


def test_multiclass_epoch_with_consistency_runs() -> None:
    images, labels = disks(4, 32, seed=4)
    labels = labels + (images[:, 0] > 0.5).long()  # classes 0, 1, 2
    options = AIDEOptions(batch_size=4, k_augment=2, warmup_epochs=0, learning_rate=1e-3)
    factory = lambda: build_unet(spatial_dims=2, out_channels=3, channels=(4, 8), num_res_units=0)  # noqa: E731
    trainer = AIDETrainer(factory, images, labels, options=options)
    stats = trainer.train_epoch(0)
    assert stats.ramp == 1.0 and math.isfinite(stats.loss_f1) and math.isfinite(stats.loss_f2)


# --- task standardization ---------------------------------------------------------------------


def test_standardization_pseudo_labels_the_unlabeled_and_marks_hq() -> None:
    images, labels = disks(6, 16, seed=5)
    seen = {}

    def train_fn(x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
        seen["n"] = x.shape[0]
        seen["labels"] = y.clone()
        return ThresholdNet()

    task = standardize_semi_supervised(images[:2], labels[:2], images[2:], train_fn=train_fn)
    assert seen["n"] == 2 and torch.equal(seen["labels"], labels[:2])  # trained on HQ only
    assert task.hq_mask.tolist() == [True, True, False, False, False, False]
    assert torch.equal(task.labels[:2], labels[:2])
    assert torch.equal(task.labels[2:], (images[2:, 0] > 0.5).long())
    assert torch.equal(task.images, images)

    target_only = standardize_domain_adaptation(
        images[:3], labels[:3], images[3:], train_fn=train_fn, include_source=False
    )
    assert target_only.hq_mask.tolist() == [False, False, False]
    assert torch.equal(target_only.labels, (images[3:, 0] > 0.5).long())


def test_new_options_are_validated_by_name() -> None:
    with pytest.raises(ValueError, match="correction_start_epoch"):
        AIDEOptions(correction_start_epoch=0).validate()
