"""Class maps are taken with ``tensor.max(dim=c).indices``, not ``tensor.argmax(dim=c)``.

On CPU, torch's argmax over a dimension that is not the last one is an order of magnitude
slower than ``max(...).indices`` (measured here: 11 ms vs 0.25 ms for ``[4, 2, 128, 128]``
logits, 74 ms vs 7 ms for ``[1, 3, 96, 96, 96]``; in AIDE's training loop the batch Dice's
argmax alone was a tenth of the run). Both give the first maximal index on ties.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

LIB = Path(__file__).resolve().parents[1] / "lib"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.long])
@pytest.mark.parametrize("dim", [0, 1])
def test_max_indices_equal_argmax_including_ties(dtype, dim) -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 3, (3, 4, 9, 7), generator=g).to(dtype)  # many ties
    assert torch.equal(values.max(dim=dim).indices, values.argmax(dim=dim))
    values[:, :, 0, 0] = 5  # all channels tied: the first
    assert int(values.max(dim=dim).indices.flatten()[0]) == 0


def test_the_library_takes_no_torch_argmax_over_a_dimension() -> None:
    offenders = [
        f"{path.relative_to(LIB)}:{n}"
        for path in LIB.rglob("*.py")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\.argmax\(dim=", line)
    ]
    assert not offenders, f"use .max(dim=...).indices (see this module): {offenders}"
