"""Small helpers shared by the benchmarks: machine facts, JSON output, tables, paired tests.

Nothing here knows about a particular method; benchmarks import what they need.
"""

from __future__ import annotations

import contextlib
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


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with left-aligned columns and a rule under the header."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
