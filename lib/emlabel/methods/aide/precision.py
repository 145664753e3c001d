"""Precision of AIDE's no-gradient passes (consistency targets, correction predictions).

Those passes are most of AIDE's cost beyond training two networks: K augmented copies of
half of every batch per network, and a prediction of every item by both networks at each
correction epoch. They need no gradients and feed a soft target or an argmax, so they may
run under ``torch.autocast`` in bfloat16 (MONAI's and nnU-Net's trainers use autocast the
same way for inference), while the training passes stay in float32. bfloat16 helps only
where the hardware has it: CUDA devices that support it, and CPUs with native bfloat16
(AVX512-BF16 / AMX; oneDNN says so); elsewhere emulated bfloat16 is slower than float32,
so ``"auto"`` falls back to float32 there.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "auto")
"""Values of ``AIDEOptions.no_grad_precision``."""


def native_bfloat16(device: torch.device) -> bool:
    """True when ``device`` computes bfloat16 natively (so autocast to it is faster)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:  # oneDNN's own check of the CPU's bfloat16 instructions
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"float32"`` or ``"bfloat16"``: ``"auto"`` is bfloat16 where it is native."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bfloat16 when ``precision`` (resolved) is ``"bfloat16"``, else a
    no-op; for the forward passes only (undoing augmentations, softmax and losses stay in
    float32)."""
    if precision == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
