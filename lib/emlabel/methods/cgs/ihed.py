"""Inter-Head Error Detection (IHED) and the specialist-fused pseudo-label.

Every specialist head k makes a per-pixel decision c_k = argmax over its **3 class
channels** (dim 1 of ``[N, 3, *spatial]``; never over a spatial axis, the authors'
public-code defect). The heads agree on a pixel iff either

* every head says background: c_k = 0 for all k (sum c_k = 0), or
* exactly one head says "mine" and every other head says "other": exactly one
  c_k = 1 and exactly K - 1 of them = 2.

The check counts decisions: consistent iff #0 == K, or (#1 == 1 and #2 == K - 1).
This is exactly the spec's "sum c_k = 0 or sum c_k = 2K - 1 with exactly one c_k = 1":
with n0 + n1 + n2 = K, n1 + 2 n2 = 2K - 1 forces 2 n0 + n1 = 1, i.e. n0 = 0 and
n1 = 1, so no combination containing a background vote (e.g. 0s and 2s, or 0 with
several 1s) can pass. For K = 3 the accepted tuples are (0,0,0), (1,2,2), (2,1,2) and
(2,2,1); for K = 1 they are (0,) and (1,).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emlabel.methods.cgs.targets import BACKGROUND, OTHER, OWN


def head_decisions(specialist_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-pixel decisions c ``[N, K, *spatial]`` (long, 0/1/2) of K ``[N, 3, *spatial]`` maps.

    Works on logits or probabilities (argmax over the class channel, dim 1).
    """
    if not specialist_outputs:
        raise ValueError("need at least one specialist output")
    for out in specialist_outputs:
        if out.ndim < 3 or out.shape[1] != 3:
            raise ValueError(f"specialist outputs must be [N, 3, *spatial], got {tuple(out.shape)}")
    return torch.stack([out.max(dim=1).indices for out in specialist_outputs], dim=1)


def ihed_consistent(decisions: torch.Tensor) -> torch.Tensor:
    """Bool mask ``[N, *spatial]`` of pixels whose decisions ``[N, K, *spatial]`` agree.

    See the module docstring for the exact rule.
    """
    k = decisions.shape[1]
    n_bg = (decisions == BACKGROUND).sum(dim=1)
    n_own = (decisions == OWN).sum(dim=1)
    n_other = (decisions == OTHER).sum(dim=1)
    all_background = n_bg == k
    one_owner = (n_own == 1) & (n_other == k - 1)
    return all_background | one_owner


def ihed_mask(specialist_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """M_s: bool mask ``[N, *spatial]`` of IHED-consistent pixels of K specialist outputs."""
    return ihed_consistent(head_decisions(specialist_outputs))


def specialist_fused(prob_list: Sequence[torch.Tensor]) -> torch.Tensor:
    """y_s ``[N, *spatial]``: argmax over [mean_k P_k(bg), P_1(own), ..., P_K(own)].

    ``prob_list`` holds the K specialists' softmax probabilities ``[N, 3, *spatial]``;
    the result is a class map in 0..K like the generalist's.
    """
    if not prob_list:
        raise ValueError("need at least one specialist probability map")
    background = torch.stack([p[:, BACKGROUND] for p in prob_list], dim=1).mean(dim=1)
    scores = torch.stack([background, *(p[:, OWN] for p in prob_list)], dim=1)
    return scores.max(dim=1).indices
