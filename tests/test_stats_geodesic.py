"""Labels grown from clicks to a known size (emlabel.methods.stats.geodesic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emlabel.methods.stats import (
    ImageTargets,
    StatsOptions,
    StatsTrainer,
    StructureStats,
    geodesic_area_labels,
    geodesic_distance,
)


def test_distance_is_the_path_length_in_mm_on_a_flat_image() -> None:
    d = geodesic_distance(np.zeros((5, 5)), np.array([[0, 0]]), (1.0, 2.0))
    assert d[2, 0] == pytest.approx(2.0)  # two steps of 1 mm along axis 0
    assert d[0, 2] == pytest.approx(4.0)  # two steps of 2 mm along axis 1
    assert d[2, 2] == pytest.approx(6.0)
    with pytest.raises(ValueError, match="seeds"):
        geodesic_distance(np.zeros((5, 5)), np.zeros((0, 2), dtype=int), (1.0, 1.0))


def _two_disks() -> tuple[torch.Tensor, torch.Tensor]:
    """A bright disk (label 1) touching a dimmer, larger disk; image [1, 48, 48]."""
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    target = ((yy - 24) ** 2 + (xx - 16) ** 2) <= 64
    other = (((yy - 24) ** 2 + (xx - 31) ** 2) <= 81) & ~target
    g = torch.Generator().manual_seed(0)
    x = 1.0 * target + 0.5 * other + 0.03 * torch.randn(48, 48, generator=g)
    return x[None].float(), target


def test_grown_label_has_the_known_size_and_follows_the_image() -> None:
    x, target = _two_disks()
    spacing = (0.5, 0.5)
    area = float(target.sum()) * 0.25
    clicks = torch.tensor([[24, 19], [20, 16], [28, 16]])  # off-centre, towards the other disk
    t = ImageTargets(
        spacing=spacing, structures=[StructureStats(structure=1, area_mm=area, clicks_in=clicks)]
    )
    grown = geodesic_area_labels(x, t)
    assert grown is not None and int((grown == 1).sum()) == int(target.sum())
    dice = 2 * float(((grown == 1) & target).sum()) / (2 * float(target.sum()))
    plain = geodesic_area_labels(x, t, intensity_weight=0.0)  # a blob around the clicks
    assert plain is not None
    dice_plain = 2 * float(((plain == 1) & target).sum()) / (2 * float(target.sum()))
    assert dice > 0.95 and dice_plain < 0.9


def test_outside_clicks_and_smaller_structures_are_respected() -> None:
    x, _ = _two_disks()
    inside = torch.tensor([[24, 16]])
    outside = torch.tensor([[24, 17], [25, 16]])
    small = StructureStats(structure=2, area_mm=5.0, clicks_in=torch.tensor([[24, 15]]))
    big = StructureStats(structure=1, area_mm=60.0, clicks_in=inside, clicks_out=outside)
    only_clicks = StructureStats(structure=3, clicks_in=torch.tensor([[5, 5]]))
    t = ImageTargets(spacing=(1.0, 1.0), structures=[big, small, only_clicks])
    grown = geodesic_area_labels(x, t)
    assert grown is not None
    assert int((grown == 2).sum()) == 5 and int((grown == 1).sum()) == 60
    assert int(grown[24, 15]) == 2  # the smaller structure claimed its click first
    assert all(int(grown[r, c]) != 1 for r, c in outside.tolist())
    assert int((grown == 3).sum()) == 0  # no size: nothing grown
    assert (
        geodesic_area_labels(x, ImageTargets(spacing=(1.0, 1.0), structures=[only_clicks])) is None
    )


def test_trainer_grows_labels_only_where_size_and_clicks_exist_and_no_full_label() -> None:
    x, target = _two_disks()
    images = x[None].repeat(3, 1, 1, 1)
    clicks = torch.tensor([[24, 16], [24, 18]])
    both = ImageTargets(
        spacing=(1.0, 1.0),
        structures=[StructureStats(structure=1, area_mm=float(target.sum()), clicks_in=clicks)],
    )
    clicks_only = ImageTargets(
        spacing=(1.0, 1.0), structures=[StructureStats(structure=1, clicks_in=clicks)]
    )
    full = torch.zeros(3, 48, 48, dtype=torch.long)
    full[2] = target.long()
    options = StatsOptions(grow_labels=True, max_epochs=1)
    trainer = StatsTrainer(
        lambda: torch.nn.Conv2d(1, 2, 1),
        images,
        [both, clicks_only, both],
        full_labels=full,
        full_label_mask=torch.tensor([False, False, True]),
        options=options,
    )
    assert trainer.grown_mask.tolist() == [True, False, False]
    assert trainer.full_label_mask.tolist() == [True, False, True]
    grown = trainer.grown_labels()
    assert list(grown) == [0] and int(grown[0].sum()) == int(target.sum())
    assert torch.equal(trainer.full_labels[2].cpu(), target.long())  # a real label wins
    off = StatsTrainer(lambda: torch.nn.Conv2d(1, 2, 1), images, [both] * 3, options=StatsOptions())
    assert off.grown_labels() == {} and not bool(off.grown_mask.any())
