"""Segmentation from summary statistics + a few clicks: targets, the three loss terms, spacing,
the trainer (2D runs comparing area + clicks with clicks only, a 3D multi-structure smoke run)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch

from emlabel.methods.stats import (
    ImageTargets,
    LossTerms,
    StatsOptions,
    StatsTrainer,
    StructureStats,
    area_matched_labels,
    class_logits,
    click_maps,
    entropy_loss,
    image_stat_loss,
    overlap_loss,
    reconstruction_loss,
    region_means,
    sparse_label_map,
    statistic_loss,
    stats_loss,
    targets_from_label,
)
from emlabel.metrics import dice
from emlabel.nets import build_unet


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run on one CPU thread: these tensors are tiny, and two threads fighting a loaded
    2-core machine made a 100-step run ~15x slower (5 s instead of 0.3 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def disk_image(
    seed: int, *, size: int = 32, radius: float = 7.0, rim: bool = False, noise: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright disk (image ``[1, 1, size, size]``, mask ``[size, size]``) on a dark noisy
    background. With ``rim`` only the core (radius 4) is bright (1.0) and the outer ring of the
    disk is half as bright (0.5): intensity alone does not say where the disk ends."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float32),
        torch.arange(size, dtype=torch.float32),
        indexing="ij",
    )
    centre = torch.tensor([14.0, 15.0]) + torch.rand(2, generator=g) * 3
    d2 = (y - centre[0]) ** 2 + (x - centre[1]) ** 2
    disk = d2 < radius**2
    img = disk.float()
    if rim:
        img = (d2 < 4.0**2).float() + 0.5 * ((d2 >= 4.0**2) & disk).float()
    img = img + noise * torch.randn(img.shape, generator=g)
    return img[None, None], disk


def small_unet_2d() -> torch.nn.Module:
    return build_unet(spatial_dims=2, out_channels=2, channels=(8, 16), num_res_units=0)


def train_disk(seed: int, *, with_area: bool, rim: bool) -> tuple[float, StatsTrainer]:
    """100 Adam steps (lr 3e-2) of the full loss (all lambdas 1) on one 32x32 disk image with
    5 clicks inside (and its true area if ``with_area``); returns Dice to the true disk."""
    img, disk = disk_image(seed, rim=rim)
    targets = targets_from_label(
        disk.long(),
        (1.0, 1.0),
        n_in=5,
        with_area=with_area,
        generator=torch.Generator().manual_seed(100 + seed),
    )
    options = StatsOptions(learning_rate=3e-2, max_epochs=100, batch_size=1, seed=seed)
    trainer = StatsTrainer(small_unet_2d, img, [targets], options=options)
    trainer.fit()
    pred = trainer.predict_labels(img)[0] == 1
    return dice(pred.numpy(), disk.numpy()), trainer


# --- options and targets ----------------------------------------------------------------------


def test_options_defaults_and_validation_names_the_field() -> None:
    o = StatsOptions()
    assert (o.lambda_stat, o.lambda_overlap, o.lambda_rec, o.use_reconstruction) == (
        1.0,
        1.0,
        1.0,
        True,
    )
    o.validate()
    with pytest.raises(ValueError, match="lambda_stat"):
        StatsOptions(lambda_stat=-1.0).validate()
    with pytest.raises(ValueError, match="reconstruction_mode"):
        StatsOptions(reconstruction_mode="chan").validate()
    with pytest.raises(ValueError, match="learning_rate"):
        StatsOptions(learning_rate=math.nan).validate()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("area", "reason"),
    [
        (-3.0, "must not be negative"),
        (math.nan, "must be finite"),
        (math.inf, "must be finite"),
        (0.0, "must be positive"),
    ],
)
def test_bad_areas_are_refused_with_the_reason(area: float, reason: str) -> None:
    with pytest.raises(ValueError, match=rf"structure 2: area_mm {reason}"):
        StructureStats(structure=2, area_mm=area)


def test_bad_clicks_and_spacing_are_refused_with_the_reason() -> None:
    ok = StructureStats(structure=1, area_mm=10.0, clicks_in=[[3, 4]], clicks_out=[[0, 0]])
    targets = ImageTargets(spacing=(1.0, 1.0), structures=[ok])
    targets.check_shape((8, 8))
    with pytest.raises(ValueError, match=r"clicks_in click \(3, 4\) lies outside the image"):
        targets.check_shape((8, 4))
    with pytest.raises(ValueError, match="spacing has 2 values but the image has 3"):
        targets.check_shape((8, 8, 8))
    with pytest.raises(ValueError, match=r"click \(-1, 2\) lies outside the image \(negative"):
        StructureStats(structure=1, clicks_out=[[-1, 2]])
    with pytest.raises(ValueError, match="non-integer coordinates"):
        StructureStats(structure=1, clicks_in=[[1.5, 2.0]])
    with pytest.raises(ValueError, match=r"must be \[n, ndim\]"):
        StructureStats(structure=1, clicks_in=[1, 2])
    with pytest.raises(ValueError, match=r"voxel \(1, 1\) is clicked both inside and outside"):
        StructureStats(structure=1, clicks_in=[[1, 1]], clicks_out=[[1, 1]])
    with pytest.raises(ValueError, match="has 3 coordinates per click but spacing has 2"):
        ImageTargets(
            spacing=(1.0, 1.0), structures=[StructureStats(structure=1, clicks_in=[[1, 1, 1]])]
        )
    with pytest.raises(ValueError, match="structure 1 is listed twice"):
        ImageTargets(spacing=(1.0, 1.0), structures=[ok, ok])
    with pytest.raises(ValueError, match="inside both structure 1 and structure 2"):
        ImageTargets(
            spacing=(1.0, 1.0),
            structures=[ok, StructureStats(structure=2, clicks_in=[[3, 4]])],
        )
    with pytest.raises(ValueError, match="spacing values must be finite and positive"):
        ImageTargets(spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="structure must be an integer label value >= 1"):
        StructureStats(structure=0)


def test_trainer_refuses_targets_that_do_not_fit_the_images_or_the_network() -> None:
    img = torch.zeros(2, 1, 8, 8)
    good = ImageTargets(spacing=(1.0, 1.0), structures=[StructureStats(structure=1, area_mm=4.0)])
    outside = ImageTargets(
        spacing=(1.0, 1.0), structures=[StructureStats(structure=1, clicks_in=[[2, 8]])]
    )
    with pytest.raises(ValueError, match=r"targets\[1\]: structure 1: clicks_in click \(2, 8\)"):
        StatsTrainer(small_unet_2d, img, [good, outside])
    third = ImageTargets(spacing=(1.0, 1.0), structures=[StructureStats(structure=2, area_mm=1.0)])
    with pytest.raises(ValueError, match="mention structure 2 but the network gives 2 classes"):
        StatsTrainer(small_unet_2d, img, [good, third])
    with pytest.raises(ValueError, match="2 targets for 1 images"):
        StatsTrainer(small_unet_2d, img[:1], [good, good])


def test_click_helpers_draw_sparse_maps() -> None:
    targets = ImageTargets(
        spacing=(1.0, 1.0),
        structures=[
            StructureStats(structure=1, clicks_in=[[0, 1], [2, 3]], clicks_out=[[4, 4]]),
            StructureStats(structure=2, clicks_in=[[5, 0]]),
        ],
    )
    inside, outside = click_maps(targets, (6, 6))
    assert inside.shape == outside.shape == (2, 6, 6)
    assert inside[0].nonzero().tolist() == [[0, 1], [2, 3]]
    assert outside[0].nonzero().tolist() == [[4, 4]]
    assert inside[1].nonzero().tolist() == [[5, 0]] and not outside[1].any()
    sparse = sparse_label_map(targets, (6, 6))
    assert sparse[0, 1] == 1 and sparse[2, 3] == 1 and sparse[5, 0] == 2
    assert int((sparse >= 0).sum()) == 3  # outside clicks say "not 1", not which class


def test_targets_from_label_give_true_size_in_mm_and_clicks_inside() -> None:
    label = torch.zeros(10, 12, dtype=torch.long)
    label[2:5, 3:7] = 1  # 12 pixels
    t = targets_from_label(
        label, (0.5, 2.0), n_in=5, n_out=3, generator=torch.Generator().manual_seed(0)
    )
    st = t.get(1)
    assert st is not None and st.area_mm == pytest.approx(12 * 1.0)
    assert st.clicks_in.shape == (5, 2) and bool((label[tuple(st.clicks_in.T)] == 1).all())
    assert st.clicks_out.shape == (3, 2) and bool((label[tuple(st.clicks_out.T)] == 0).all())


# --- the statistic term -----------------------------------------------------------------------


def test_statistic_loss_is_zero_at_the_target_and_matches_a_hand_example() -> None:
    m = torch.zeros(4, 4)
    m[:2] = 0.5  # sum(m) = 4
    v = 0.5 * 0.8  # spacing (0.5, 0.8) mm -> 0.4 mm^2 per pixel; predicted area 1.6 mm^2
    assert float(statistic_loss(m, 1.6, v)) == pytest.approx(0.0, abs=1e-12)
    # (1.6 - 2.0)^2 / 2.0^2 = 0.04
    assert float(statistic_loss(m, 2.0, v)) == pytest.approx(0.04)
    # (1.6 - 1.0)^2 / 1.0^2 = 0.36: too large is penalised too
    assert float(statistic_loss(m, 1.0, v)) == pytest.approx(0.36)
    # the same through the per-image function, which takes v from the targets' spacing
    probs = torch.stack([1 - m, m])
    targets = ImageTargets(
        spacing=(0.5, 0.8), structures=[StructureStats(structure=1, area_mm=2.0)]
    )
    assert float(image_stat_loss(probs, targets)) == pytest.approx(0.04)


def test_a_low_stat_temperature_moves_the_mask_edge_not_every_voxel() -> None:
    # logits of a disk: +6 inside, -6 far outside, crossing 0 at the disk's edge
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    radius = ((yy - 16) ** 2 + (xx - 16) ** 2).sqrt()
    z = (6.0 * (5.0 - radius)).clamp(-6.0, 6.0)
    edge = (radius - 5.0).abs() < 0.5
    far = radius > 12.0
    area = 2.0 * math.pi * 25.0  # the disk should be twice as large
    targets = [
        ImageTargets(spacing=(1.0, 1.0), structures=[StructureStats(structure=1, area_mm=area)])
    ]
    x = torch.zeros(1, 1, 32, 32)

    def grad(temperature: float) -> torch.Tensor:
        logits = z[None, None].clone().requires_grad_(True)
        o = StatsOptions(use_reconstruction=False, stat_temperature=temperature)
        stats_loss(logits, x, targets, options=o).total.backward()
        return logits.grad[0, 0].abs()

    soft, sharp = grad(1.0), grad(0.1)
    # both grow the mask (the gradient is nonzero), but at T = 0.1 the far voxels get
    # practically none of it and the edge gets it all
    assert float(sharp[edge].mean()) > 0
    assert float(sharp[far].mean()) < 1e-6 * float(sharp[edge].mean())
    assert float(soft[far].mean()) > 1e-3 * float(soft[edge].mean())
    with pytest.raises(ValueError, match="stat_temperature"):
        StatsOptions(stat_temperature=0.0).validate()
    with pytest.raises(ValueError, match="grow_intensity_weight"):
        StatsOptions(grow_intensity_weight=-1.0).validate()


def test_the_same_physical_area_at_two_spacings_gives_the_same_loss() -> None:
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(16, 16, generator=g)  # spacing 1.0 mm
    fine = coarse.repeat_interleave(2, 0).repeat_interleave(2, 1)  # spacing 0.5 mm, same areas
    area = 100.0
    t_coarse = ImageTargets(
        spacing=(1.0, 1.0), structures=[StructureStats(structure=1, area_mm=area)]
    )
    t_fine = ImageTargets(
        spacing=(0.5, 0.5), structures=[StructureStats(structure=1, area_mm=area)]
    )
    loss_coarse = image_stat_loss(torch.stack([1 - coarse, coarse]), t_coarse)
    loss_fine = image_stat_loss(torch.stack([1 - fine, fine]), t_fine)
    assert float(loss_coarse) > 0.01
    assert float(loss_fine) == pytest.approx(float(loss_coarse), rel=1e-5)
    # ignoring the spacing (counting voxels) would give a different loss at the fine grid
    assert float(statistic_loss(fine, area, 1.0)) != pytest.approx(float(loss_coarse), rel=0.1)
    # 3D, anisotropic: a volume in mm^3
    vol = torch.rand(4, 4, 4, generator=g)
    fine3 = vol.repeat_interleave(2, 2)  # last axis halved: spacing (1, 2, 1.5) -> (1, 2, 0.75)
    a3 = float(vol.sum()) * 3.0 * 1.2  # 20% above the predicted 3.0 * sum mm^3
    expected = ((1.0 - 1.2) / 1.2) ** 2
    assert float(statistic_loss(vol, a3, 1.0 * 2.0 * 1.5)) == pytest.approx(expected, rel=1e-5)
    assert float(statistic_loss(fine3, a3, 1.0 * 2.0 * 0.75)) == pytest.approx(expected, rel=1e-5)


# --- the overlap term -------------------------------------------------------------------------


def test_overlap_gradient_raises_the_mask_at_clicked_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 8, 8, generator=g).requires_grad_(True)
    clicks_in = torch.tensor([[1, 1], [4, 5], [6, 2]])
    clicks_out = torch.tensor([[0, 7], [7, 7]])
    loss = overlap_loss(logits, 1, clicks_in, clicks_out)
    # hand value: - mean log m at the inside clicks - mean log(1 - m) at the outside clicks
    m = torch.softmax(logits.detach(), dim=0)[1]
    expected = -m[tuple(clicks_in.T)].log().mean() - (1 - m[tuple(clicks_out.T)]).log().mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    grad = logits.grad
    assert grad is not None
    assert bool((grad[1][tuple(clicks_in.T)] < 0).all())  # descent raises the fg logit
    assert bool((grad[0][tuple(clicks_in.T)] > 0).all())
    assert bool((grad[1][tuple(clicks_out.T)] > 0).all())  # and lowers it where clicked out
    clicked = torch.zeros(8, 8, dtype=torch.bool)
    clicked[tuple(torch.cat([clicks_in, clicks_out]).T)] = True
    assert bool((grad[:, ~clicked] == 0).all())  # unclicked pixels get no gradient

    with torch.no_grad():
        stepped = logits - 0.5 * grad  # one SGD step
    m_new = torch.softmax(stepped, dim=0)[1]
    assert bool((m_new[tuple(clicks_in.T)] > m[tuple(clicks_in.T)]).all())
    assert bool((m_new[tuple(clicks_out.T)] < m[tuple(clicks_out.T)]).all())


def test_overlap_in_a_multi_structure_softmax_raises_the_clicked_structure() -> None:
    logits = torch.zeros(3, 6, 6, requires_grad=True)
    clicks = torch.tensor([[2, 2], [3, 3]])
    opt = torch.optim.SGD([logits], lr=1.0)
    loss = overlap_loss(logits, 2, clicks, torch.zeros(0, 2, dtype=torch.long))
    assert float(loss.detach()) == pytest.approx(math.log(3.0))  # m_2 = 1/3 everywhere
    loss.backward()
    opt.step()
    m = torch.softmax(logits.detach(), dim=0)
    assert bool((m[2][tuple(clicks.T)] > 1 / 3).all())
    assert bool((m[1][tuple(clicks.T)] < 1 / 3).all())
    with pytest.raises(ValueError, match="needs at least one click"):
        overlap_loss(logits, 1, torch.zeros(0, 2), torch.zeros(0, 2))


def test_a_sigmoid_output_is_the_binary_softmax() -> None:
    z = torch.randn(2, 1, 5, 5)
    m = torch.softmax(class_logits(z), dim=1)[:, 1:]
    assert torch.allclose(m, torch.sigmoid(z), atol=1e-6)


# --- the reconstruction term ------------------------------------------------------------------


def test_region_means_are_the_mask_weighted_means() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    w = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.5, 0.5, 1.0]])
    c = region_means(x, w)
    assert c[0, 0] == pytest.approx(1.5, rel=1e-5)
    assert c[1, 0] == pytest.approx((1.0 + 1.5 + 4.0) / 2.0, rel=1e-5)


def test_reconstruction_prefers_the_true_mask_to_a_shifted_one() -> None:
    g = torch.Generator().manual_seed(0)
    img, disk = disk_image(0, noise=0.1)
    true_mask = disk.float()
    shifted = torch.roll(true_mask, shifts=(3, 2), dims=(0, 1))
    x = img[0]
    rec_true = reconstruction_loss(x, torch.stack([1 - true_mask, true_mask]))
    rec_shift = reconstruction_loss(x, torch.stack([1 - shifted, shifted]))
    assert float(rec_true) < 0.5 * float(rec_shift)
    assert float(rec_true) == pytest.approx(0.01, rel=0.15)  # just the noise variance left
    # a random soft mask is worse still than the truth
    rand = torch.rand(true_mask.shape, generator=g)
    assert float(reconstruction_loss(x, torch.stack([1 - rand, rand]))) > float(rec_true)


def test_reconstruction_modes_agree_for_one_structure_and_partition_fits_k_regions() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.rand(12, 12, generator=g)
    x = torch.rand(1, 12, 12, generator=g)
    probs = torch.stack([1 - m, m])
    a = reconstruction_loss(x, probs, "partition")
    b = reconstruction_loss(x, probs, "one_vs_rest")
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    # three flat regions (0, 0.5, 1): the 3-region partition explains them exactly; each
    # structure-vs-rest model has a mixed "rest" and cannot
    label = torch.zeros(12, 12, dtype=torch.long)
    label[:, 4:8] = 1
    label[:, 8:] = 2
    x3 = (0.5 * label.float())[None]
    onehot = torch.nn.functional.one_hot(label, 3).permute(2, 0, 1).float()
    assert float(reconstruction_loss(x3, onehot, "partition")) == pytest.approx(0.0, abs=1e-8)
    assert float(reconstruction_loss(x3, onehot, "one_vs_rest")) > 0.01


def _object_on_shaded_background() -> tuple[torch.Tensor, torch.Tensor]:
    """A disk 0.25 brighter than its surroundings on a background shaded 0 -> 1 left to right
    (a bias field, as in ultrasound or microscopy); ``[1, 64, 64]`` and the disk mask."""
    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    disk = (((yy - 32) ** 2 + (xx - 20) ** 2) <= 36).float()
    x = xx / 63.0 + 0.25 * disk
    return (x + 0.02 * torch.randn(64, 64, generator=g))[None], disk


def test_local_reconstruction_finds_an_object_on_a_shaded_background() -> None:
    x, disk = _object_on_shaded_background()
    bright_half = (x[0] > 0.5).float()  # the dominant contrast: the shading

    def rec(mask: torch.Tensor, mode: str) -> float:
        return float(reconstruction_loss(x, torch.stack([1 - mask, mask]), mode))

    # the global two-region model prefers thresholding the shading to the object
    assert rec(bright_half, "partition") < rec(disk, "partition")
    # local region means explain the shading, so the object mask wins
    assert rec(disk, "local") < rec(bright_half, "local")
    shifted = torch.roll(disk, shifts=(0, 12), dims=(0, 1))
    assert rec(disk, "local") < 0.6 * rec(shifted, "local")


def test_normalized_reconstruction_does_not_depend_on_the_intensity_unit() -> None:
    x, disk = _object_on_shaded_background()
    probs = torch.stack([1 - disk, disk])
    for mode in ("partition", "local"):
        a = reconstruction_loss(x, probs, mode, normalize=True)
        b = reconstruction_loss(1000.0 * x - 200.0, probs, mode, normalize=True)
        assert float(a) == pytest.approx(float(b), rel=1e-3)
        # unnormalised, the loss scales with the unit squared
        raw = reconstruction_loss(1000.0 * x, probs, mode)
        assert float(raw) == pytest.approx(
            1e6 * float(reconstruction_loss(x, probs, mode)), rel=1e-3
        )


def test_reconstruction_sigma_must_be_positive() -> None:
    with pytest.raises(ValueError, match="reconstruction_sigma"):
        StatsOptions(reconstruction_sigma=0.0).validate()


# --- the combined loss ------------------------------------------------------------------------


def test_weak_terms_can_leave_images_with_a_full_label_to_dicece() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    images = torch.rand(2, 1, 8, 8, generator=g)
    t = ImageTargets(
        spacing=(1.0, 1.0),
        structures=[StructureStats(structure=1, area_mm=10.0, clicks_in=torch.tensor([[3, 3]]))],
    )
    full = torch.zeros(2, 8, 8, dtype=torch.long)
    has_full = torch.tensor([True, False])
    probs = torch.softmax(logits, 1)

    def terms(on_labeled: bool) -> LossTerms:
        o = StatsOptions(weak_terms_on_labeled=on_labeled)
        return stats_loss(logits, images, [t, t], options=o, full_labels=full, has_full=has_full)

    off, on = terms(False), terms(True)
    # off: only image 1 (no full label) has weak terms; image 0 is DiceCE alone
    assert float(off.stat) == pytest.approx(float(image_stat_loss(probs[1], t)), rel=1e-5)
    assert float(off.rec) == pytest.approx(
        float(reconstruction_loss(images[1], probs[1])), rel=1e-5
    )
    both = (image_stat_loss(probs[0], t) + image_stat_loss(probs[1], t)) / 2
    assert float(on.stat) == pytest.approx(float(both), rel=1e-5)
    assert float(off.full) == pytest.approx(float(on.full))
    assert StatsOptions().weak_terms_on_labeled  # the spec's loss by default


def test_terms_are_skipped_per_image_when_their_supervision_is_absent() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    images = torch.rand(2, 1, 8, 8, generator=g)
    with_area = ImageTargets(
        spacing=(1.0, 1.0), structures=[StructureStats(structure=1, area_mm=9.0)]
    )
    with_clicks = ImageTargets(
        spacing=(1.0, 1.0), structures=[StructureStats(structure=1, clicks_in=[[1, 2]])]
    )
    o = StatsOptions(lambda_stat=2.0, lambda_overlap=3.0, lambda_rec=5.0)
    terms = stats_loss(logits, images, [with_area, with_clicks], options=o)
    probs = torch.softmax(logits, dim=1)
    stat0 = statistic_loss(probs[0, 1], 9.0, 1.0)  # only image 0 has an area
    ovl1 = overlap_loss(logits[1], 1, torch.tensor([[1, 2]]), torch.zeros(0, 2, dtype=torch.long))
    rec = (reconstruction_loss(images[0], probs[0]) + reconstruction_loss(images[1], probs[1])) / 2
    assert terms.stat is not None and float(terms.stat) == pytest.approx(float(stat0), rel=1e-5)
    assert terms.ovl is not None and float(terms.ovl) == pytest.approx(float(ovl1), rel=1e-5)
    assert terms.rec is not None and float(terms.rec) == pytest.approx(float(rec), rel=1e-5)
    assert terms.full is None
    assert float(terms.total) == pytest.approx(float(5 * rec + 2 * stat0 + 3 * ovl1), rel=1e-5)

    nothing = ImageTargets(spacing=(1.0, 1.0))
    off = stats_loss(
        logits, images, [nothing, nothing], options=StatsOptions(use_reconstruction=False)
    )
    assert off.rec is off.stat is off.ovl is off.full is None
    assert float(off.total) == 0.0

    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    only_second = stats_loss(
        logits, images, [nothing, nothing], full_labels=labels, has_full=torch.tensor([False, True])
    )
    assert only_second.full is not None
    both = stats_loss(logits, images, [nothing, nothing], full_labels=labels)
    assert float(only_second.full) != pytest.approx(float(both.full))


# --- training ---------------------------------------------------------------------------------


def test_area_plus_clicks_beats_clicks_only_on_a_disk_with_a_dim_rim() -> None:
    """Area + 5 clicks vs the same run with the 5 clicks only (both with L_rec), 4 seeds.

    On a plain bright disk (uniform inside) L_rec alone already finds the edge, so clicks only
    reach Dice ~0.97 and the area adds nothing measurable (we measured margins of -0.02..+0.03
    over 8 seeds: a flaky comparison). The disk here has a bright core and a rim half as
    bright, so intensity alone does not say where the disk ends; the known area does.
    Measured over 8 seeds with these settings: Dice 0.88-0.96 (mean 0.93) with the area vs
    0.68-0.91 (mean 0.81) with clicks only, smallest per-seed margin 0.05 (seeds 0-3 here:
    margins 0.09-0.15). Asserted: every seed wins by > 0.03 and the mean margin is > 0.06.
    """
    margins = []
    for seed in range(4):
        with_area, trainer = train_disk(seed, with_area=True, rim=True)
        clicks_only, _ = train_disk(seed, with_area=False, rim=True)
        assert with_area > 0.85, (seed, with_area)
        assert with_area > clicks_only + 0.03, (seed, with_area, clicks_only)
        margins.append(with_area - clicks_only)
        last = trainer.history[-1]
        assert last.area_error < 0.2 < trainer.history[0].area_error
    assert sum(margins) / len(margins) > 0.06, margins


def test_plain_disk_training_records_every_term_and_fits_the_area() -> None:
    score, trainer = train_disk(2, with_area=True, rim=False)
    assert score > 0.93
    history = trainer.history
    assert len(history) == 100 and all(h.n_batches == 1 for h in history)
    last = history[-1]
    for value in (last.loss, last.loss_rec, last.loss_stat, last.loss_ovl):
        assert math.isfinite(value)
    assert math.isnan(last.loss_full)  # no full labels given
    assert last.loss_stat < history[0].loss_stat
    assert last.soft_area_error < 0.1
    assert trainer.predict(disk_image(2)[0]).shape == (1, 2, 32, 32)


def test_3d_multi_structure_smoke_with_a_full_label() -> None:
    size = 16
    axes = torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij")
    spacing = (1.0, 1.0, 2.0)
    images, labels = [], []
    g = torch.Generator().manual_seed(0)
    for shift in (0.0, 1.0):
        a = sum((ax - c) ** 2 for ax, c in zip(axes, (5 + shift, 5, 5), strict=True)) < 9
        b = sum((ax - c) ** 2 for ax, c in zip(axes, (10, 10 + shift, 10), strict=True)) < 9
        label = torch.zeros(size, size, size, dtype=torch.long)
        label[a] = 1
        label[b] = 2
        labels.append(label)
        images.append(label.float() / 2 + 0.1 * torch.randn(label.shape, generator=g))
    targets = [targets_from_label(lab, spacing, n_in=3, n_out=2, generator=g) for lab in labels]
    assert targets[0].get(1).area_mm == pytest.approx(float((labels[0] == 1).sum()) * 2.0)
    seen = []
    trainer = StatsTrainer(
        lambda: build_unet(spatial_dims=3, out_channels=3, channels=(4, 8), num_res_units=0),
        torch.stack(images)[:, None],
        targets,
        full_labels=torch.stack(labels),
        full_label_mask=torch.tensor([True, False]),
        options=StatsOptions(max_epochs=3, batch_size=2, learning_rate=1e-2),
    )
    history = trainer.fit(on_epoch=seen.append)
    assert len(history) == 3 and seen == history
    for h in history:
        for value in (h.loss, h.loss_rec, h.loss_stat, h.loss_ovl, h.loss_full, h.area_error):
            assert math.isfinite(value)
    probs = trainer.predict(torch.stack(images)[:, None])
    assert probs.shape == (2, 3, size, size, size)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, size, size, size), atol=1e-5)


def test_entropy_term_is_zero_for_certain_masks_and_log_c_for_uniform() -> None:
    one_hot = torch.zeros(3, 4, 4)
    one_hot[1] = 1.0
    assert float(entropy_loss(one_hot)) == pytest.approx(0.0, abs=1e-5)
    uniform = torch.full((3, 4, 4), 1.0 / 3.0)
    assert float(entropy_loss(uniform)) == pytest.approx(math.log(3.0), rel=1e-5)


def test_entropy_term_enters_the_total_only_when_weighted() -> None:
    logits = torch.randn(2, 2, 8, 8)
    images = torch.rand(2, 1, 8, 8)
    targets = [ImageTargets(spacing=(1.0, 1.0)) for _ in range(2)]
    off = stats_loss(logits, images, targets, options=StatsOptions())
    on = stats_loss(logits, images, targets, options=StatsOptions(lambda_ent=2.0))
    assert off.ent is None and on.ent is not None
    assert float(on.total) == pytest.approx(float(off.total) + 2.0 * float(on.ent), rel=1e-5)


def test_area_matched_labels_meet_the_known_sizes_and_honour_clicks() -> None:
    probs = torch.softmax(torch.randn(3, 12, 10, generator=torch.Generator().manual_seed(0)), 0)
    targets = ImageTargets(
        spacing=(2.0, 0.5),  # v = 1 mm^2: sizes below are voxel counts
        structures=[
            StructureStats(structure=1, area_mm=30.0, clicks_out=torch.tensor([[5, 5]])),
            StructureStats(structure=2, area_mm=6.0, clicks_in=torch.tensor([[0, 0]])),
        ],
    )
    before = probs[2, 0, 0].item()
    labels = area_matched_labels(probs, targets)
    assert labels[0, 0] == 2 and labels[5, 5] != 1  # clicks win
    assert abs(int((labels == 2).sum()) - 6) <= 1 and abs(int((labels == 1).sum()) - 30) <= 1
    top2 = torch.topk(probs[2].flatten(), 6).values.min()
    chosen = probs[2][labels == 2]
    assert bool((chosen >= top2).sum() >= 5) and probs[2, 0, 0].item() == before


def test_area_matched_labels_keep_the_argmax_where_no_size_is_known() -> None:
    probs = torch.softmax(torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1)), 0)
    targets = ImageTargets(
        spacing=(1.0, 1.0), structures=[StructureStats(structure=1, area_mm=5.0)]
    )
    labels = area_matched_labels(probs, targets)
    argmax = probs.argmax(0)
    assert int((labels == 1).sum()) == 5
    assert torch.equal(labels == 2, (argmax == 2) & (labels != 1))


def test_entropy_weight_is_validated_by_name() -> None:
    with pytest.raises(ValueError, match="lambda_ent"):
        StatsOptions(lambda_ent=-1.0).validate()
