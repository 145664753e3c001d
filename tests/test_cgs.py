"""CGS (Collaborative Generalist and Specialists): network, IHED, losses, frame."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import nn

from emlabel.errors import SettingsError
from emlabel.methods.cgs import (
    CGSOptions,
    CGSTrainer,
    PseudoLabels,
    ema_decay,
    ema_update,
    head_decisions,
    ihed_consistent,
    ihed_mask,
    lambda_schedule,
    make_pseudo_labels,
    make_teacher,
    masked_cross_entropy,
    masked_dice_loss,
    random_cutmix,
    specialist_fused,
    specialist_targets,
    weak_view,
)
from emlabel.nets.cgs import CGSNet, build_cgs_net
from emlabel.nets.factory import count_parameters

TINY_CHANNELS = (4, 8, 8, 16, 16)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _one_hot_logits(decisions: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, 3, *spatial]`` whose channel argmax is ``decisions`` ``[N, *spatial]``."""
    return F.one_hot(decisions, 3).movedim(-1, 1).float() * 5.0


# -- targets -------------------------------------------------------------------------------
def test_specialist_targets_are_one_vs_rest_vs_other() -> None:
    label = torch.tensor([[[0, 1, 2, 3], [3, 2, 1, 0]]])
    maps = specialist_targets(label, 3)
    assert len(maps) == 3
    assert maps[0].tolist() == [[[0, 1, 2, 2], [2, 2, 1, 0]]]
    assert maps[1].tolist() == [[[0, 2, 1, 2], [2, 1, 2, 0]]]
    assert maps[2].tolist() == [[[0, 2, 2, 1], [1, 2, 2, 0]]]
    assert all(m.dtype == torch.long for m in maps)
    with pytest.raises(ValueError):
        specialist_targets(label, 2)  # value 3 is not a target of a 2-target problem


# -- IHED ----------------------------------------------------------------------------------
def test_ihed_accepts_exactly_the_consistent_combinations_k3() -> None:
    combos = list(itertools.product(range(3), repeat=3))
    # One pixel per combination along a spatial axis: decisions of head k = combos[:, k].
    table = torch.tensor(combos)  # [27, 3]
    logits = [_one_hot_logits(table[:, k].reshape(1, 27, 1)) for k in range(3)]
    mask = ihed_mask(logits)
    assert mask.shape == (1, 27, 1)
    accepted = {combo for combo, ok in zip(combos, mask.flatten().tolist(), strict=True) if ok}
    assert accepted == {(0, 0, 0), (1, 2, 2), (2, 1, 2), (2, 2, 1)}


def test_ihed_decisions_use_the_channel_axis_and_rule_holds_for_k4() -> None:
    # Per-pixel argmax over the 3 channels: a spatial argmax would give another shape/value.
    probs = torch.tensor([[0.1, 0.7], [0.8, 0.2], [0.1, 0.1]]).reshape(1, 3, 2)
    assert head_decisions([probs]).tolist() == [[[1, 0]]]
    combos = list(itertools.product(range(3), repeat=4))
    decisions = torch.tensor(combos).T.reshape(1, 4, len(combos))
    got = ihed_consistent(decisions).flatten().tolist()
    for combo, ok in zip(combos, got, strict=True):
        expected = all(c == 0 for c in combo) or (combo.count(1) == 1 and combo.count(2) == 3)
        assert ok == expected, combo


def test_specialist_fused_uses_mean_background_and_each_own_class() -> None:
    # Pixel 0: both heads background-ish -> 0. Pixel 1: head 2 most sure of its class -> 2.
    p1 = torch.tensor([[0.6, 0.3], [0.2, 0.3], [0.2, 0.4]]).reshape(1, 3, 2)
    p2 = torch.tensor([[0.7, 0.1], [0.1, 0.6], [0.2, 0.3]]).reshape(1, 3, 2)
    assert specialist_fused([p1, p2]).tolist() == [[0, 2]]


def test_pseudo_labels_masks_and_consensus() -> None:
    gen = torch.tensor([[10.0, 0.0], [0.0, 0.5], [0.0, 0.0]]).reshape(1, 3, 2)  # K = 2
    spec = [_one_hot_logits(torch.tensor([[0, 1]])), _one_hot_logits(torch.tensor([[0, 2]]))]
    pseudo = make_pseudo_labels(gen, spec, tau=0.95)
    assert pseudo.y_g.tolist() == [[0, 1]]
    assert pseudo.m_g.tolist() == [[True, False]]  # pixel 1 is not confident
    assert pseudo.y_s.tolist() == [[0, 1]]
    assert pseudo.m_s.tolist() == [[True, True]]
    assert pseudo.m_e.tolist() == [[True, True]]
    only = make_pseudo_labels(gen, None, tau=0.95)
    assert only.y_s is None and only.m_s is None and only.m_e is None


def test_confident_masks_drop_pixels_no_head_is_sure_of() -> None:
    # K = 2, three pixels: 0 all sure (background), 1 IHED-consistent but head 1 unsure,
    # 2 generalist sure of class 1 and the heads agree but are unsure
    gen = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.3, 9.0], [0.0, 0.0, 0.0]]).reshape(1, 3, 3)
    head1 = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.6, 0.6], [0.0, 0.0, 0.0]]).reshape(1, 3, 3)
    head2 = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 9.0, 0.6]]).reshape(1, 3, 3)
    spec = [head1, head2]
    plain = make_pseudo_labels(gen, spec, tau=0.95)
    sure = make_pseudo_labels(gen, spec, tau=0.95, confident_masks=True)
    assert plain.m_g.tolist() == [[True, False, True]]
    assert plain.m_s.tolist() == [[True, True, True]]  # the spec: IHED consistency only
    assert sure.m_s.tolist() == [[True, False, False]]
    assert plain.m_e.tolist() == [[True, True, True]]
    assert sure.m_e.tolist() == [[True, False, True]]  # pixel 2: the generalist is sure
    assert torch.equal(plain.y_s, sure.y_s) and torch.equal(plain.y_g, sure.y_g)


# -- teacher -------------------------------------------------------------------------------
def test_teacher_is_an_ema_of_the_student() -> None:
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher = make_teacher(student)
    t0 = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    s1 = [p.clone() for p in student.parameters()]
    student.train()(torch.randn(4, 3))  # changes BN running stats
    assert ema_update(teacher, student, 1) == pytest.approx(0.5)
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(3.0)
    s2 = [p.clone() for p in student.parameters()]
    assert ema_update(teacher, student, 2) == pytest.approx(2 / 3)
    for t, a, b, c in zip(teacher.parameters(), t0, s1, s2, strict=True):
        t1 = 0.5 * a + 0.5 * b
        torch.testing.assert_close(t, (2 / 3) * t1 + (1 / 3) * c)
    for tb, sb in zip(teacher.buffers(), student.buffers(), strict=True):
        torch.testing.assert_close(tb, sb)
    assert ema_decay(0) == 0.0
    assert ema_decay(10_000) == pytest.approx(0.99)
    assert all(not p.requires_grad for p in teacher.parameters())


# -- network -------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_generalist_only_has_the_parameters_of_a_plain_unet(spatial_dims: int) -> None:
    net = build_cgs_net(
        spatial_dims=spatial_dims, in_channels=1, num_classes=4, channels=TINY_CHANNELS
    )
    plain = BasicUNet(
        spatial_dims=spatial_dims, in_channels=1, out_channels=4, features=(*TINY_CHANNELS, 16)
    )
    served = net.generalist_only()
    assert count_parameters(served) == count_parameters(plain)
    head = (16 * 16 + 16) + 2 * 16 + (16 * 3 * 3**spatial_dims + 3)
    assert count_parameters(net) == count_parameters(plain) + 3 * head
    assert count_parameters(served) < count_parameters(net)

    net.eval()
    served.eval()
    x = torch.randn(2, 1, *(16,) * spatial_dims)
    generalist, specialists = net.forward_all(x)
    assert generalist.shape == (2, 4, *(16,) * spatial_dims)
    assert [s.shape[1] for s in specialists] == [3, 3, 3]
    torch.testing.assert_close(net(x), generalist)
    torch.testing.assert_close(served(x), generalist)


# -- losses --------------------------------------------------------------------------------
def test_masked_dice_ignores_masked_out_pixels_in_every_channel() -> None:
    target = torch.randint(0, 4, (2, 8, 8))
    mask = torch.rand(2, 8, 8) > 0.5
    logits = torch.randn(2, 4, 8, 8)
    # Outside the mask: different targets (often background) and predictions.
    other_target = torch.where(mask, target, torch.randint(0, 4, (2, 8, 8)))
    other_target[~mask & (torch.rand(2, 8, 8) > 0.5)] = 0
    other_logits = torch.where(mask[:, None], logits, torch.randn(2, 4, 8, 8) * 3)
    a = masked_dice_loss(logits, target, mask)
    b = masked_dice_loss(other_logits, other_target, mask)
    torch.testing.assert_close(a, b)

    # A prediction perfect inside the mask and wrong outside has ~zero loss.
    perfect = F.one_hot(target, 4).movedim(-1, 1).float() * 50
    wrong = F.one_hot((target + 1) % 4, 4).movedim(-1, 1).float() * 50
    mixed = torch.where(mask[:, None], perfect, wrong)
    assert masked_dice_loss(mixed, target, mask).item() < 1e-4
    assert masked_dice_loss(mixed, target).item() > 0.3

    # No gradient reaches masked-out pixels, in any channel (background included).
    leaf = logits.clone().requires_grad_(True)
    (masked_dice_loss(leaf, target, mask) + masked_cross_entropy(leaf, target, mask)).backward()
    assert leaf.grad is not None
    assert torch.all(leaf.grad[(~mask)[:, None].expand_as(leaf)] == 0)
    assert leaf.grad[mask[:, None].expand_as(leaf)].abs().sum() > 0

    empty = torch.zeros_like(mask)
    assert masked_dice_loss(logits, target, empty).item() == pytest.approx(0.0)
    assert masked_cross_entropy(logits, target, empty).item() == 0.0


def test_lambda_schedule_and_options() -> None:
    assert lambda_schedule(1.0) == pytest.approx(0.1)
    assert lambda_schedule(0.0) == pytest.approx(0.1 * math.exp(-5))
    assert lambda_schedule(0.5, 0.2) == pytest.approx(0.2 * math.exp(-1.25))
    CGSOptions().validate()
    with pytest.raises(SettingsError, match="cutmix_area"):
        CGSOptions(cutmix_area=(0.5, 0.2)).validate()
    with pytest.raises(SettingsError, match="tau"):
        CGSOptions(tau=1.5).validate()


# -- augmentation --------------------------------------------------------------------------
def test_cutmix_uses_the_same_box_for_image_pseudo_labels_and_masks() -> None:
    n, size = 4, 32
    gen = torch.Generator().manual_seed(3)
    index = torch.arange(n).reshape(n, 1, 1).expand(n, size, size)
    image = torch.stack([index * 10.0, index * 10.0 + 1], dim=1)  # channel c = 10 i + c
    pseudo = PseudoLabels(
        y_g=index.clone(),
        m_g=index % 2 == 1,
        y_s=index + 5,
        m_s=index >= 2,
        decisions=torch.stack([index, index, index], dim=1),
        y_e=index.clone(),
        m_e=index < 1,
    )
    mix = random_cutmix(n, (size, size), (0.02, 0.4), generator=gen)
    mixed_image = mix(image)
    mixed = pseudo.map(mix)

    origin = (mixed_image[:, 0] / 10).long()  # which sample each pixel came from
    torch.testing.assert_close(mixed_image[:, 1], mixed_image[:, 0] + 1)
    assert torch.equal(mixed.y_g, origin)
    assert torch.equal(mixed.y_e, origin)
    assert torch.equal(mixed.y_s, origin + 5)
    assert torch.equal(mixed.m_g, origin % 2 == 1)
    assert torch.equal(mixed.m_s, origin >= 2)
    assert torch.equal(mixed.m_e, origin < 1)
    assert all(torch.equal(mixed.decisions[:, k], origin) for k in range(3))
    for i in range(n):
        source = int(mix.source[i])
        assert source != i
        box = mix.boxes[i]
        assert torch.equal(origin[i] == source, box)
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        assert box.sum() == len(rows) * len(cols)  # one rectangle
        assert 0.01 <= box.float().mean().item() <= 0.45


def test_weak_view_moves_image_and_label_together() -> None:
    gen = torch.Generator().manual_seed(0)
    label = torch.zeros(3, 16, 16, dtype=torch.long)
    label[:, 2:6, 3:9] = 1
    image = label[:, None].float() * 2 + 1
    out_image, out_label = weak_view(image, label, generator=gen, rotation_degrees=0)
    torch.testing.assert_close(out_image[:, 0], out_label.float() * 2 + 1)
    assert out_label.sum() == label.sum()


# -- smoke runs ----------------------------------------------------------------------------
def _toy_2d(n: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with a big disc (class 1) and a tiny square (class 2)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        cy, cx = 12 + i % 3, 14 + i % 4
        labels[i][(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 1
        labels[i, 25 + i % 2 : 27 + i % 2, 24:26] = 2
    images = labels[:, None].float() * 0.5 + 0.1 * torch.randn(n, 1, size, size)
    return images, labels


def test_smoke_2d_cgs_and_baseline() -> None:
    images, labels = _toy_2d(8)
    options = CGSOptions(
        max_iterations=3, labeled_batch_size=2, unlabeled_batch_size=2, tau=0.5, seed=1
    )
    net = build_cgs_net(spatial_dims=2, in_channels=1, num_classes=3, channels=TINY_CHANNELS)
    trainer = CGSTrainer(net, options)
    before = [p.clone() for p in trainer.teacher.parameters()]
    history = trainer.fit(images[:4], labels[:4], images[4:])
    assert len(history) == 3
    for stats in history:
        for key in ("loss", "loss_sup_gen", "loss_sup_spec", "loss_unsup_gen", "loss_unsup_spec"):
            assert math.isfinite(stats[key]), key
        for key in ("mask_g", "mask_s", "mask_e"):
            assert 0.0 <= stats[key] <= 1.0
    assert history[0]["lr"] == pytest.approx(0.01)
    assert history[-1]["lambda"] == pytest.approx(0.1)
    assert any(
        not torch.equal(a, b) for a, b in zip(before, trainer.teacher.parameters(), strict=True)
    )
    assert trainer.predict(images[:2]).shape == (2, 32, 32)
    served = trainer.serving_model()
    torch.testing.assert_close(served(images[:2]), trainer.teacher(images[:2]))

    baseline_net = build_cgs_net(
        spatial_dims=2, in_channels=1, num_classes=3, channels=TINY_CHANNELS
    )
    heads = [p.clone() for p in baseline_net.specialists.parameters()]
    baseline = CGSTrainer(baseline_net, options, use_specialists=False)
    stats = baseline.fit(images[:4], labels[:4], images[4:], iterations=2)[-1]
    assert "loss_sup_spec" not in stats and "mask_s" not in stats
    assert math.isfinite(stats["loss"])
    assert all(
        torch.equal(a, b) for a, b in zip(heads, baseline_net.specialists.parameters(), strict=True)
    )


def test_smoke_3d() -> None:
    size = 16
    labels = torch.zeros(4, size, size, size, dtype=torch.long)
    labels[:, 3:11, 3:11, 3:11] = 1
    labels[:, 12:14, 12:14, 12:14] = 2
    images = labels[:, None].float() + 0.1 * torch.randn(4, 1, size, size, size)
    net = CGSNet(spatial_dims=3, in_channels=1, num_classes=3, channels=TINY_CHANNELS)
    options = CGSOptions(max_iterations=2, labeled_batch_size=2, unlabeled_batch_size=2)
    trainer = CGSTrainer(net, options)
    history = trainer.fit(images[:2], labels[:2], images[2:])
    assert len(history) == 2
    assert all(math.isfinite(s["loss"]) for s in history)
    assert trainer.predict(images[:1]).shape == (1, size, size, size)
