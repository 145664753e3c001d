"""RestoreLabeld gives exactly MONAI Invertd's nearest-neighbour labels, 2D and 3D."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai import transforms as mt
from monai.data import MetaTensor
from PIL import Image

from emlabel.data.restore_label import RestoreLabeld, restore_label, separable_axes


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("restore")
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 3, (61, 47, 23)).astype(np.int16)
    # LPS-like, axes permuted and flipped: Orientation must permute and flip back
    affine = np.array([[-0.77, 0, 0, 10], [0, 0, 1.3, -5], [0, 0.9, 0, 3], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume, affine), root / "ct.nii.gz")
    Image.fromarray((rng.random((50, 70)) * 255).astype(np.uint8)).save(root / "xr.png")
    return {"3d": str(root / "ct.nii.gz"), "2d": str(root / "xr.png")}


@pytest.mark.parametrize(
    "kind,pixdim,pad",
    [("3d", (2.0, 2.0, 3.0), False), ("3d", (0.5, 0.7, 1.0), True), ("3d", (1.6, 1.6, 2.5), True),
     ("2d", (1.0, 1.0), True), ("2d", (0.7, 1.3), False)],
)  # fmt: skip
def test_same_voxels_and_affine_as_invertd(files, kind, pixdim, pad):
    dims = len(pixdim)
    chain = [
        mt.LoadImaged("image", image_only=False),
        mt.EnsureChannelFirstd("image"),
        mt.Orientationd("image", axcodes="RAS"[:dims]),
        mt.Spacingd("image", pixdim=pixdim, mode="bilinear"),
    ]
    if pad:
        chain.append(mt.SpatialPadd("image", spatial_size=(96,) * dims))
    pre = mt.Compose(chain)
    data = pre({"image": files[kind]})
    data["pred"] = MetaTensor(torch.randint(0, 4, data["image"].shape).float())
    expected = mt.Invertd(
        keys="pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True
    )(dict(data))["pred"]
    restored = RestoreLabeld("pred", transform=pre)(dict(data))["pred"]
    assert restored.shape == expected.shape
    assert torch.equal(restored, expected)
    assert np.allclose(np.asarray(restored.affine), np.asarray(expected.affine))


def test_an_oblique_geometry_is_not_separable():
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    assert separable_axes(rotation) is None
    assert separable_axes(np.diag([2.0, -1.0, 0.5, 1.0])) == [0, 1, 2]
    label = torch.ones(1, 4, 4, 4)
    assert (
        restore_label(label, label_affine=np.eye(4), image_affine=rotation, image_shape=(4, 4, 4))
        is None
    )


def test_outside_the_network_grid_is_background():
    label = torch.ones(1, 4, 4)
    shifted = np.eye(3)
    shifted[0, 2] = 2.0  # the image starts 2 voxels further: its last 2 rows are outside
    out = restore_label(label, label_affine=np.eye(3), image_affine=shifted, image_shape=(4, 4))
    assert out is not None and out[0, :2].eq(1).all() and out[0, 2:].eq(0).all()
