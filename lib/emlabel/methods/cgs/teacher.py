"""Mean teacher: an exponential moving average (EMA) of the student's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, decay_max: float = 0.99) -> float:
    """min(1 - 1/(step + 1), decay_max): 0 at step 0 (teacher := student), then rising."""
    return min(1.0 - 1.0 / (step + 1), decay_max)


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` (no gradients, eval mode: BN running stats, no dropout)."""
    teacher = copy.deepcopy(student)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, step: int, decay_max: float = 0.99) -> float:
    """teacher = d * teacher + (1 - d) * student with d = ``ema_decay(step, decay_max)``.

    Buffers (BatchNorm running mean/var, batch counters) are copied from the student.
    Returns the decay used.
    """
    decay = ema_decay(step, decay_max)
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ValueError("teacher and student have different parameters")
    for name, t_param in t_params.items():
        t_param.mul_(decay).add_(s_params[name].detach(), alpha=1.0 - decay)
    s_buffers = dict(student.named_buffers())
    for name, t_buffer in teacher.named_buffers():
        t_buffer.copy_(s_buffers[name])
    return decay
