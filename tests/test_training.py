"""Supervised training loop, atomic model publishing, crash safety of the trainer."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from emlabel.checkpoints import file_sha256, load_checkpoint, publish_checkpoint
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.train import SegmentationTrainer
from emlabel.nets import build_unet
from emlabel.settings import AppSettings
from emlabel.training.supervised import split_items, train_supervised

SETTINGS = AppSettings(
    labels=("cube",),
    target_spacing=(2.0, 2.0, 2.0),
    intensity_window=(0.0, 100.0),
    roi_size=(16, 16, 16),
    network_channels=(8, 16),
    num_res_units=0,
    train_batch_size=2,
    learning_rate=1e-2,
    val_fraction=0.25,
)


def cube_studies(root: Path, n: int = 4) -> Path:
    """Bright cubes on a dark noisy background, with exact labels as 'final'."""
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        label = np.zeros((16, 16, 16), np.uint8)
        x, y, z = rng.integers(2, 7, size=3)
        label[x : x + 7, y : y + 7, z : z + 7] = 1
        image = (label * 80 + rng.normal(10, 5, label.shape)).astype(np.int16)
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), studies / f"cube{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), studies / "labels" / "final" / f"cube{i}.nii.gz")
    return studies


def test_split_is_deterministic_and_holds_out_one():
    items = [{"id": f"c{i}"} for i in range(5)]
    train, val = split_items(items, val_fraction=0.1, seed=1)
    assert len(val) == 1 and len(train) == 4
    assert split_items(list(reversed(items)), val_fraction=0.1, seed=1) == (train, val)
    assert split_items(items, val_fraction=0.0, seed=1)[1] == []


def test_training_learns_an_easy_task(tmp_path):
    studies = cube_studies(tmp_path)
    store = VersionedDatastore(str(studies), settings=SETTINGS)
    items = store.training_items()
    train, val = split_items(items, val_fraction=0.25, seed=0)
    net = build_unet(spatial_dims=3, out_channels=2, channels=(8, 16), num_res_units=0)
    result = train_supervised(net, train, val, settings=SETTINGS, max_epochs=25)
    losses = [h.train_loss for h in result.history]
    assert len(losses) == 25
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])
    assert result.best_val_dice is not None and result.best_val_dice > 0.7
    assert result.val_ids and set(result.val_ids).isdisjoint(result.train_ids)


def test_training_without_labels_is_refused(tmp_path):
    net = build_unet(spatial_dims=3, out_channels=2, channels=(8, 16))
    with pytest.raises(ValueError, match="no labeled images"):
        train_supervised(net, [], [], settings=SETTINGS, max_epochs=1)


def test_publish_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    publish_checkpoint(path, {"w": torch.ones(2)}, {"method": "x"})
    before = file_sha256(path)

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        publish_checkpoint(path, {"w": torch.zeros(2)}, {"method": "x"})
    assert file_sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    state, meta = load_checkpoint(path)
    assert torch.equal(state["w"], torch.ones(2)) and meta == {"method": "x"}


def test_crash_mid_training_leaves_the_served_model(tmp_path, monkeypatch):
    studies = cube_studies(tmp_path)
    store = VersionedDatastore(str(studies), settings=SETTINGS)
    model_path = tmp_path / "model" / "segmentation.pt"
    trainer = SegmentationTrainer(model_path=str(model_path), settings=SETTINGS, description="t")
    trainer({"max_epochs": 1}, store)
    served = file_sha256(model_path)
    labels_before = {v.tag for i in store.list_images() for v in store.versions(i)}

    import emlabel.monailabel.train as train_module

    def crashing(*args, on_epoch=None, **kwargs):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(train_module, "train_supervised", crashing)
    with pytest.raises(RuntimeError):
        trainer({"max_epochs": 2}, store)
    assert file_sha256(model_path) == served
    assert {v.tag for i in store.list_images() for v in store.versions(i)} == labels_before


def test_trainer_request_options(tmp_path):
    trainer = SegmentationTrainer(
        model_path=str(tmp_path / "m.pt"), settings=SETTINGS, description="t"
    )
    assert trainer.parse_request({"model": "segmentation", "max_epochs": "3"}).max_epochs == 3
    from emlabel.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="unknown train option"):
        trainer.parse_request({"epochs": 3})
    with pytest.raises(InvalidRequestError, match="max_epochs"):
        trainer.parse_request({"max_epochs": -1})


def test_a_small_labeled_set_is_sampled_up_to_the_minimum_steps_per_epoch():
    import dataclasses

    from monai import transforms as mt
    from monai.data import CacheDataset

    from emlabel.errors import SettingsError
    from emlabel.training.sampling import EpochDraws, epoch_length

    settings = dataclasses.replace(AppSettings(), train_batch_size=4, min_steps_per_epoch=25)
    assert epoch_length(200, settings) == (200, False)  # 50 batches: one pass
    assert epoch_length(5, settings) == (100, True)
    assert epoch_length(5, AppSettings()) == (5, False)  # 0: stock behaviour
    two = dataclasses.replace(AppSettings(), train_batch_size=2, min_steps_per_epoch=2)
    assert epoch_length(3, two) == (3, False)  # one pass is already 2 batches
    with pytest.raises(SettingsError, match="min_steps_per_epoch"):
        dataclasses.replace(AppSettings(), min_steps_per_epoch=-1).validate()

    # the draws of an epoch, and each draw's augmentation, depend on (seed, epoch, draw) only
    noisy = mt.Compose([mt.RandGaussianNoised(keys="x", prob=1.0)])
    base = CacheDataset([{"x": torch.zeros(1, 4), "i": i} for i in range(5)], transform=noisy,
                        progress=False)  # fmt: skip
    draws = EpochDraws(base, settings=settings)
    drawn = [int(draws.order[p]) for p in range(len(draws))]
    assert len(drawn) == 100 and set(drawn) == set(range(5))
    first = draws[7]["x"].clone()
    draws[3]  # another draw in between changes nothing
    assert torch.equal(draws[7]["x"], first) and int(draws[7]["i"]) == drawn[7]
    draws.set_epoch(1)
    assert [int(draws.order[p]) for p in range(len(draws))] != drawn
    other = EpochDraws(base, settings=settings)
    other.set_epoch(1)
    assert torch.equal(other.order, draws.order) and torch.equal(other[7]["x"], draws[7]["x"])
