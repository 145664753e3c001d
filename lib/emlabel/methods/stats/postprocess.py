"""Hard masks that honour the known sizes: the labels written back for weakly labelled images.

The losses match the *soft* size sum(m_k) * v to A_k, which a diffuse mask meets while its
argmax is far too small (measured in ``bench/stats.py``). Where A_k is known -- every image the
``stats`` trainer writes a label for -- the hard label can match it exactly: take the
n_k = round(A_k / v) voxels of highest m_k. Written by hand: MONAI's post-processing has
thresholds and connected components, not a per-image size constraint.
"""

from __future__ import annotations

import torch

from emlabel.methods.stats.targets import ImageTargets


def area_matched_labels(probs: torch.Tensor, targets: ImageTargets) -> torch.Tensor:
    """Label map ``[*spatial]`` (long) from softmax ``probs`` ``[K + 1, *spatial]``.

    Start from the argmax. For each structure k with a known size A_k (smallest first, so a
    small structure is not swallowed by a large neighbour), voxels labelled k are released and
    the n_k = round(A_k / v) voxels of highest p_k among the still unclaimed ones (background,
    k, or a structure without a known size) become k; v = prod(spacing). Clicked voxels are
    then forced: inside-clicks of k become k, outside-clicks labelled k become background.
    """
    if probs.ndim < 3:
        raise ValueError(f"probs must be [K + 1, *spatial], got {tuple(probs.shape)}")
    targets.check_shape(probs.shape[1:])
    labels = probs.max(dim=0).indices
    claimed = torch.zeros_like(labels, dtype=torch.bool)
    sized = sorted(
        (st for st in targets.structures if st.area_mm is not None),
        key=lambda st: float(st.area_mm),
    )
    for st in sized:
        k = st.structure
        if k >= probs.shape[0]:
            raise ValueError(f"structure {k} has no channel in probs of {probs.shape[0]}")
        n = round(float(st.area_mm) / targets.voxel_volume)
        labels[labels == k] = 0
        score = probs[k].masked_fill(claimed, -1.0).flatten()
        n = min(n, int((~claimed).sum()))
        top = torch.topk(score, n).indices if n > 0 else score.new_zeros(0, dtype=torch.long)
        flat = labels.view(-1)
        flat[top] = k
        claimed.view(-1)[top] = True
    for st in targets.structures:
        if st.clicks_in.shape[0]:
            labels[tuple(st.clicks_in.long().T)] = st.structure
        if st.clicks_out.shape[0]:
            where = tuple(st.clicks_out.long().T)
            labels[where] = torch.where(labels[where] == st.structure, 0, labels[where])
    return labels
