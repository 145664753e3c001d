"""Two-network ensemble served as one network (AIDE's test-time average)."""

from __future__ import annotations

import torch
from torch import nn


class PairedSoftmaxEnsemble(nn.Module):
    """Runs f1 and f2; outputs ``[log(mean softmax), softmax f1, softmax f2]`` on channels.

    The first C channels are log-probabilities, so a standard softmax post-transform on them
    gives the mean of both networks' softmax; the other 2C channels let the caller measure
    how much the two networks disagree, from the same sliding-window pass.
    """

    def __init__(self, f1: nn.Module, f2: nn.Module) -> None:
        super().__init__()
        self.nets = nn.ModuleList([f1, f2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = torch.softmax(self.nets[0](x), dim=1)
        p2 = torch.softmax(self.nets[1](x), dim=1)
        return torch.cat([torch.log(0.5 * (p1 + p2) + 1e-8), p1, p2], dim=1)


def split_paired_output(out: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, ...]:
    """``(log mean prob, p1, p2)`` from a :class:`PairedSoftmaxEnsemble` output (channel dim 0 or 1)."""
    dim = 0 if out.ndim in (3, 4) and out.shape[0] == 3 * num_classes else 1
    return tuple(torch.split(out, num_classes, dim=dim))


class LogMeanSoftmaxEnsemble(nn.Module):
    """``log(mean(softmax f1, softmax f2))``: the served AIDE ensemble as a plain network.

    Same parameters (``nets.0.*``, ``nets.1.*``) as :class:`PairedSoftmaxEnsemble`; a softmax
    on its output is the mean of both networks' softmax. Used for TorchScript export.
    """

    def __init__(self, f1: nn.Module, f2: nn.Module) -> None:
        super().__init__()
        self.nets = nn.ModuleList([f1, f2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = torch.softmax(self.nets[0](x), dim=1)
        p2 = torch.softmax(self.nets[1](x), dim=1)
        # 1e-8 as a literal: TorchScript cannot read module-level constants.
        return torch.log(0.5 * (p1 + p2) + 1e-8)
