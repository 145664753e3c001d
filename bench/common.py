"""Small helpers shared by the benchmarks: machine facts, JSON output, tables, paired tests.

Nothing here knows about a particular method; benchmarks import what they need.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from emlabel.nets import build_unet
from emlabel.tables import format_table  # noqa: F401 (the benchmarks import it from here)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit(repo: Path = PROJECT_ROOT) -> str | None:
    """``git rev-parse HEAD`` of ``repo``, or None when git or the repository is unavailable."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_facts() -> dict[str, Any]:
    """CPU count and model, library versions, Python version, torch threads, load average."""
    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    try:
        facts["load_average_1_5_15"] = list(os.getloadavg())
    except OSError:
        facts["load_average_1_5_15"] = None
    for module in ("torch", "monai", "numpy", "scipy"):
        with contextlib.suppress(ImportError):
            facts[f"{module}_version"] = __import__(module).__version__
    with contextlib.suppress(ImportError):
        import torch

        facts["torch_threads"] = torch.get_num_threads()
        facts["cuda_available"] = bool(torch.cuda.is_available())
    return facts


def command_line() -> str:
    """A shell command that reproduces this run (working directory, niceness and argv)."""
    argv = [sys.executable, *sys.argv]
    with contextlib.suppress(OSError, ValueError):
        argv[0] = os.path.relpath(sys.executable)
    nice = os.nice(0)
    prefix = f"nice -n {nice} " if nice else ""
    return f"cd {shlex.quote(os.getcwd())} && {prefix}{shlex.join(argv)}"


def run_header() -> dict[str, Any]:
    """What every benchmark JSON starts with: command, machine, commit, start time."""
    return {
        "command": command_line(),
        "machine": machine_facts(),
        "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples, paths and non-finite floats for strict JSON.

    Non-finite floats become the strings ``"inf"``, ``"-inf"`` and ``"nan"``.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented strict JSON (atomic rename; parent directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, std (ddof=1), median, min, max of the finite values; counts of all and non-finite."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    out: dict[str, float | int] = {"n": int(arr.size), "n_nonfinite": int(arr.size - finite.size)}
    if finite.size:
        out.update(
            mean=float(finite.mean()),
            std=float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            median=float(np.median(finite)),
            min=float(finite.min()),
            max=float(finite.max()),
        )
    else:
        out.update(mean=math.nan, std=math.nan, median=math.nan, min=math.nan, max=math.nan)
    return out


def mean_std_text(values: Sequence[float], digits: int = 3) -> str:
    """``"mean +- std"`` of the finite values, with ``" (k inf)"`` when some are not finite."""
    s = summarize(values)
    text = f"{s['mean']:.{digits}f} +- {s['std']:.{digits}f}"
    if s["n_nonfinite"]:
        text += f" ({s['n_nonfinite']} inf)"
    return text


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of paired samples ``a`` vs ``b``.

    Pairs with a non-finite value are dropped. Returns n, mean and median of ``a - b``,
    the statistic and p-value (p = 1.0 when every difference is zero, None when n < 2).
    """
    from scipy.stats import wilcoxon

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.shape} vs {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    out: dict[str, Any] = {
        "test": "wilcoxon signed-rank, two-sided (scipy)",
        "n": int(d.size),
        "n_dropped_nonfinite": int(keep.size - d.size),
        "mean_diff": float(d.mean()) if d.size else None,
        "median_diff": float(np.median(d)) if d.size else None,
        "statistic": None,
        "p_value": None,
    }
    if d.size < 2:
        return out
    if not np.any(d):
        out["p_value"] = 1.0
        return out
    res = wilcoxon(x[keep], y[keep])
    out["statistic"] = float(res.statistic)
    out["p_value"] = float(res.pvalue)
    return out


def format_p(p: float | None) -> str:
    """A p-value for a table: ``"-"`` when missing, else 3 significant digits."""
    return "-" if p is None else f"{p:.3g}"


@contextlib.contextmanager
def timed(store: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block, in seconds, to ``store[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        store[key] = store.get(key, 0.0) + time.perf_counter() - start


# ------------------------------------------------ ../shared/data (never copied)
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


# ---------------------------------------- the benchmarks' small UNet recipe
Member = tuple[str, tuple[float, ...]]
"""A test-time member: (kind, argument), kind flip / roll / intensity."""


@dataclasses.dataclass(frozen=True)
class Train:
    """Training of the per-data-set UNet (same recipe everywhere)."""

    steps: int
    batch_size: int
    channels: tuple[int, ...]
    learning_rate: float = 2e-3
    dropout: float = 0.2
    mc_passes: int = 10


def train_unet(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    n_classes: int,
    cfg: Train,
    flip_axes: Sequence[int],
    seed: int,
    roll_axes: Sequence[int] = (),
    roll_max: int = 0,
) -> torch.nn.Module:
    """A MONAI UNet trained with DiceCE and Adam on whole images.

    Augmentation: random flips on ``flip_axes``; random whole-voxel rolls of up to ``roll_max``
    on ``roll_axes`` (so that rolled test-time members stay in distribution).

    ``images``: [N, 1, *S] float32 (S already a multiple of the UNet's stride product);
    ``labels``: [N, *S] int64. ``flip_axes`` index the spatial axes.
    """
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dims = images.ndim - 2
    model = build_unet(
        spatial_dims=dims, out_channels=n_classes, channels=cfg.channels, dropout=cfg.dropout
    )
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps))
    x_all = torch.from_numpy(images)
    y_all = torch.from_numpy(labels)[:, None]
    model.train()
    for _ in range(cfg.steps):
        idx = rng.choice(len(images), size=min(cfg.batch_size, len(images)), replace=False)
        xs, ys = [], []
        for i in idx:
            x, y = x_all[i], y_all[i]
            for ax in flip_axes:
                if rng.random() < 0.5:
                    x, y = torch.flip(x, (ax + 1,)), torch.flip(y, (ax + 1,))
            if roll_axes and roll_max:
                shifts = tuple(
                    int(v) for v in rng.integers(-roll_max, roll_max + 1, len(roll_axes))
                )
                dims = tuple(a + 1 for a in roll_axes)
                x, y = torch.roll(x, shifts, dims), torch.roll(y, shifts, dims)
            xs.append(x)
            ys.append(y)
        opt.zero_grad()
        loss = loss_fn(model(torch.stack(xs)), torch.stack(ys))
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def softmax_of(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Softmax [C, *S] of one image ``x`` [1, *S] (no grad)."""
    with torch.no_grad():
        return torch.softmax(model(x[None]), dim=1)[0].numpy()


def predict_members(
    model: torch.nn.Module, image: np.ndarray, members: Sequence[Member]
) -> list[np.ndarray]:
    """Softmax [C, *S] per TTA member, mapped back to the image grid. ``image``: [1, *S]."""
    model.eval()
    x = torch.from_numpy(image)
    out = []
    for kind, arg in members:
        if kind == "flip":
            dims = tuple(int(a) + 1 for a in arg)
            p = softmax_of(model, torch.flip(x, dims) if dims else x)
            out.append(np.flip(p, dims).copy() if dims else p)
        elif kind == "roll":
            shifts = tuple(int(a) for a in arg)
            dims = tuple(range(1, len(shifts) + 1))
            p = softmax_of(model, torch.roll(x, shifts, dims))
            out.append(np.roll(p, tuple(-a for a in shifts), axis=dims))
        elif kind == "intensity":
            out.append(softmax_of(model, x * float(arg[0]) + float(arg[1])))
        else:
            raise ValueError(f"unknown TTA member {kind!r}")
    return out
