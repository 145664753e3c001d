"""What accepted labels usually look like, per structure: the verifier's shape prior.

:class:`ShapePopulation` is fitted on the :class:`~emlabel.verify.features.StructureFeatures`
of accepted labels (human-final or verified). Per structure it keeps:

- ``present_fraction``: share of accepted labels that contain the structure at all;
- the log-volume's median and robust spread, and a 101-point quantile table of the volume
  (volume percentiles and outlierness use only non-empty labels);
- the median and robust spread of every numeric feature in :data:`STAT_FIELDS` (Dice and
  distances to the ensemble, ensemble disagreement, component count, intensity), so the
  verifier can say "Dice 0.41 (accepted labels: median 0.93)" and judge a small structure by
  small-structure standards.

Robust spread = IQR / 1.349 (equal to the standard deviation for a normal distribution),
floored so that a tiny or uniform population cannot make every deviation infinitely
significant: at least ``0.05 * |median|`` and at least ``1e-3`` (log-volume: only at least
:data:`MIN_LOG_VOLUME_SIGMA`, since a log's size depends on the unit). A structure with fewer than ``min_samples`` (default 3) non-empty
accepted labels has no statistics (its scores are ``None``): too few to say what is typical.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from emlabel.verify.features import StructureFeatures

STAT_FIELDS: tuple[str, ...] = (
    "dice_to_ensemble_mean",
    "assd_mm",
    "hd95_mm",
    "ensemble_disagreement",
    "n_components",
    "largest_component_fraction",
    "intensity_mean",
)
"""Features whose median and spread the population keeps (besides the volume)."""

MIN_LOG_VOLUME_SIGMA = 0.1
"""Floor of the log-volume spread: volumes within ~10% of each other are never outliers."""

N_QUANTILES = 101


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureStat:
    """Median and robust spread of one feature over a population."""

    median: float
    sigma: float
    n: int

    def z(self, value: float) -> float:
        """Robust z-score ``(value - median) / sigma``."""
        return (value - self.median) / self.sigma


@dataclasses.dataclass(frozen=True, kw_only=True)
class VolumeScore:
    """Where a label's volume falls among the accepted labels of its structure."""

    volume_mm3: float
    percentile: float
    """0-100, mid-rank in the accepted volumes' quantile table (0 below all, 100 above all)."""
    z: float
    """Robust z-score of the log-volume."""
    median_mm3: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class StructureStats:
    """Population statistics of one structure."""

    n: int
    """Accepted labels seen (empty ones included)."""
    present_fraction: float
    log_volume: FeatureStat | None = None
    volume_quantiles: tuple[float, ...] = ()
    stats: dict[str, FeatureStat] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "present_fraction": self.present_fraction,
            "log_volume": None if self.log_volume is None else dataclasses.asdict(self.log_volume),
            "volume_quantiles": list(self.volume_quantiles),
            "stats": {k: dataclasses.asdict(v) for k, v in self.stats.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StructureStats:
        lv = data.get("log_volume")
        return cls(
            n=int(data["n"]),
            present_fraction=float(data["present_fraction"]),
            log_volume=None if lv is None else FeatureStat(**lv),
            volume_quantiles=tuple(float(q) for q in data.get("volume_quantiles", ())),
            stats={k: FeatureStat(**v) for k, v in data.get("stats", {}).items()},
        )


def robust_stat(
    values: Iterable[float | None], *, min_sigma: float = 1e-3, relative_floor: float = 0.05
) -> FeatureStat:
    """Median and IQR/1.349 of the finite ``values``.

    The spread is at least ``relative_floor * |median|`` and at least ``min_sigma``.
    """
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no finite values")
    median = float(np.median(arr))
    q1, q3 = np.percentile(arr, [25, 75])
    sigma = max(float(q3 - q1) / 1.349, relative_floor * abs(median), min_sigma)
    return FeatureStat(median=median, sigma=sigma, n=int(arr.size))


class ShapePopulation:
    """Per-structure statistics of accepted labels; see the module docstring."""

    def __init__(
        self, structures: Mapping[str, StructureStats] | None = None, *, min_samples: int = 3
    ) -> None:
        if min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        self.structures: dict[str, StructureStats] = dict(structures or {})
        self.min_samples = min_samples

    @classmethod
    def fit(cls, features: Iterable[StructureFeatures], *, min_samples: int = 3) -> ShapePopulation:
        """Statistics of the accepted labels' features, grouped by structure name."""
        groups: dict[str, list[StructureFeatures]] = {}
        for f in features:
            groups.setdefault(f.structure, []).append(f)
        structures = {}
        for name, group in groups.items():
            present = [f for f in group if not f.empty]
            stats: dict[str, FeatureStat] = {}
            log_volume = None
            quantiles: tuple[float, ...] = ()
            if len(present) >= min_samples:
                volumes = np.asarray([f.volume_mm3 for f in present])
                log_volume = robust_stat(
                    np.log(volumes), min_sigma=MIN_LOG_VOLUME_SIGMA, relative_floor=0.0
                )
                quantiles = tuple(
                    float(q) for q in np.quantile(volumes, np.linspace(0, 1, N_QUANTILES))
                )
                for field in STAT_FIELDS:
                    values = [getattr(f, field) for f in present]
                    if sum(v is not None for v in values) >= min_samples:
                        stats[field] = robust_stat(values)
            structures[name] = StructureStats(
                n=len(group),
                present_fraction=len(present) / len(group),
                log_volume=log_volume,
                volume_quantiles=quantiles,
                stats=stats,
            )
        return cls(structures, min_samples=min_samples)

    def __contains__(self, structure: str) -> bool:
        return structure in self.structures

    def stats_of(self, structure: str) -> StructureStats | None:
        return self.structures.get(structure)

    def typical(self, structure: str, field: str) -> FeatureStat | None:
        """Median/spread of ``field`` for ``structure`` (None if unknown)."""
        s = self.structures.get(structure)
        return None if s is None else s.stats.get(field)

    def present_fraction(self, structure: str) -> float | None:
        """Share of accepted labels containing the structure (None if never seen)."""
        s = self.structures.get(structure)
        return None if s is None else s.present_fraction

    def typical_components(self, structure: str) -> int | None:
        """Usual connected-component count (the rounded median), None if unknown."""
        stat = self.typical(structure, "n_components")
        return None if stat is None else max(1, round(stat.median))

    def volume_score(self, features: StructureFeatures) -> VolumeScore | None:
        """Percentile and log-volume z-score of a non-empty label; None if not scorable."""
        s = self.structures.get(features.structure)
        if s is None or s.log_volume is None or features.empty:
            return None
        q = np.asarray(s.volume_quantiles)
        v = features.volume_mm3
        rank = (np.searchsorted(q, v, side="left") + np.searchsorted(q, v, side="right")) / 2
        return VolumeScore(
            volume_mm3=v,
            percentile=float(100.0 * rank / len(q)),
            z=s.log_volume.z(math.log(v)),
            median_mm3=math.exp(s.log_volume.median),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict that :meth:`from_dict` reads back."""
        return {
            "min_samples": self.min_samples,
            "structures": {k: v.to_dict() for k, v in self.structures.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShapePopulation:
        return cls(
            {k: StructureStats.from_dict(v) for k, v in data.get("structures", {}).items()},
            min_samples=int(data.get("min_samples", 3)),
        )
