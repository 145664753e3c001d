"""Segmentation from summary statistics (area/volume per structure) plus a few clicked pixels.

Plain PyTorch/MONAI on in-memory tensors (images ``[N, C, *spatial]``), 2D and 3D, one or
several structures (softmax channel k = structure k); see
``/work/shared/specs/summary-stats.md``.
"""

from emlabel.methods.stats.geodesic import geodesic_area_labels, geodesic_distance
from emlabel.methods.stats.losses import (
    LossTerms,
    class_logits,
    entropy_loss,
    full_label_loss,
    image_overlap_loss,
    image_stat_loss,
    overlap_loss,
    reconstruction_loss,
    region_means,
    statistic_loss,
    stats_loss,
    two_region_loss,
    voxel_volume,
)
from emlabel.methods.stats.options import RECONSTRUCTION_MODES, StatsOptions
from emlabel.methods.stats.postprocess import area_matched_labels
from emlabel.methods.stats.targets import (
    ImageTargets,
    StructureStats,
    click_maps,
    click_mask,
    sample_clicks,
    sparse_label_map,
    targets_from_label,
)
from emlabel.methods.stats.trainer import StatsEpochStats, StatsTrainer

__all__ = [
    "RECONSTRUCTION_MODES",
    "ImageTargets",
    "LossTerms",
    "StatsEpochStats",
    "StatsOptions",
    "StatsTrainer",
    "StructureStats",
    "area_matched_labels",
    "class_logits",
    "click_maps",
    "click_mask",
    "entropy_loss",
    "full_label_loss",
    "geodesic_area_labels",
    "geodesic_distance",
    "image_overlap_loss",
    "image_stat_loss",
    "overlap_loss",
    "reconstruction_loss",
    "region_means",
    "sample_clicks",
    "sparse_label_map",
    "statistic_loss",
    "stats_loss",
    "targets_from_label",
    "two_region_loss",
    "voxel_volume",
]
