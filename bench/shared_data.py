"""Paths to ``../shared/data`` and the small readers the benchmarks share (never copies data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import PROJECT_ROOT
from PIL import Image

DATA = PROJECT_ROOT.parent / "shared" / "data"
BUBIL = DATA / "bubil" / "BU-BIL_Dataset1"
SHENZHEN = DATA / "shenzhen"
TOTALSEG = DATA / "totalseg"
PYRADIOMICS = DATA / "pyradiomics"


def object_mask(source: Path | np.ndarray | Image.Image) -> np.ndarray:
    """Boolean object mask of a BU-BIL annotation: the minority value (RGB: first channel).

    BU-BIL stores the cell as either value of a boolean PNG; the cell is the smaller class.
    """
    a = np.asarray(Image.open(source) if isinstance(source, Path) else source)
    if a.ndim == 3:
        a = a[..., 0]
    m = a.astype(bool)
    return m if m.mean() < 0.5 else ~m


def resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask by bilinear (area-like) interpolation, then threshold at 0.5."""
    img = Image.fromarray(mask.astype(np.float32), mode="F")
    return np.asarray(img.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)) >= 0.5


def load_grey(path: Path, hw: tuple[int, int]) -> np.ndarray:
    """A grey image resized to ``hw`` (rows, columns) and z-scored."""
    img = Image.open(path).convert("L").resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.float32)
    return (a - a.mean()) / (a.std() + 1e-6)


def bubil_names() -> list[str]:
    """Stems of the BU-BIL Dataset1 raw images, sorted."""
    return sorted(p.stem for p in (BUBIL / "RawImages").glob("*.png"))


def bubil_gold(name: str) -> np.ndarray:
    """The gold-standard object mask of one BU-BIL image at full resolution."""
    return object_mask(BUBIL / "GoldStandard" / f"seg_{name}.png")


def load_shenzhen(size: int) -> dict[str, Any]:
    """All Shenzhen images ``[N,1,S,S]`` and lung masks ``[N,S,S]`` (threshold 127, then resize)."""
    names, images, masks = [], [], []
    for path in sorted((SHENZHEN / "2d_images").glob("*.png")):
        names.append(path.stem)
        images.append(load_grey(path, (size, size)))
        m = np.asarray(Image.open(SHENZHEN / "2d_masks" / path.name).convert("L")) > 127
        masks.append(resize_mask(m, (size, size)))
    return {
        "names": names,
        "images": torch.from_numpy(np.stack(images))[:, None],
        "masks": torch.from_numpy(np.stack(masks)).long(),
    }
