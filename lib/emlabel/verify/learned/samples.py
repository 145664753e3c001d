"""Self-supervised examples for the learned verifier, made from labels the project trusts.

A trusted label (a human final or an accepted label) is "right"; the same label under the
errors of :mod:`.corrupt`, the model's own prediction and another structure's mask are
candidates whose Dice to it says whether they are wrong (``Dice < bad_dice``). No new
annotation is needed. Every structure is worked on inside its *region* (its box and the
model's, widened by half its size and :data:`REGION_MARGIN_VOXELS`), so that examples of a
small organ in a large CT cost what the organ costs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from emlabel.metrics import dice
from emlabel.verify.learned.corrupt import CORRUPTIONS, mild_wobble
from emlabel.verify.learned.inputs import crop_box

REGION_MARGIN = 0.5
REGION_MARGIN_VOXELS = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrustedLabel:
    """An image with a label taken as right, and optionally the model's maps for it."""

    image: np.ndarray
    """``(C, *spatial)`` float, normalised as the segmentation model sees it."""
    label: np.ndarray
    """``spatial`` integer label map."""
    model_maps: Mapping[str, np.ndarray] | None = None
    """Structure name -> the model's probability of it, ``spatial`` in [0, 1]; None: no model."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Region:
    """One structure of one trusted label, cropped to where it is (views, no copies)."""

    structure: str
    value: int
    box: tuple[slice, ...]
    image: np.ndarray
    label: np.ndarray
    """The label map's crop: the structure's mask and the other structures' come from it."""
    model_map: np.ndarray | None

    @property
    def truth(self) -> np.ndarray:
        return self.label == self.value

    def other_values(self) -> list[int]:
        """Label values of the other structures in the region (candidates for a mix-up)."""
        return [int(v) for v in np.unique(self.label) if v not in (0, self.value)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidate:
    """A candidate mask of a region, how it was made, and its Dice to the trusted label."""

    mask: np.ndarray
    kind: str
    dice: float


def regions(trusted: TrustedLabel, label_map: Mapping[str, int]) -> list[Region]:
    """The region of every structure of ``label_map`` (the whole image for one that neither the
    label nor the model has: a rightly empty label is an example too)."""
    label = np.asarray(trusted.label)
    out = []
    for name, value in label_map.items():
        model = None if trusted.model_maps is None else np.asarray(trusted.model_maps[name])
        masks = [label == value] + ([] if model is None else [model >= 0.5])
        box = crop_box(masks, label.shape, margin=REGION_MARGIN)
        box = tuple(
            slice(max(0, s.start - REGION_MARGIN_VOXELS), min(n, s.stop + REGION_MARGIN_VOXELS))
            for s, n in zip(box, label.shape, strict=True)
        )
        out.append(
            Region(
                structure=name,
                value=int(value),
                box=box,
                image=np.asarray(trusted.image)[(slice(None), *box)],
                label=label[box],
                model_map=None if model is None else model[box].astype(np.float32),
            )
        )
    return out


def candidates(region: Region, rng: np.random.Generator, *, n_errors: int) -> list[Candidate]:
    """The trusted mask, a mildly jittered copy, ``n_errors`` random errors, the model's mask
    and one other structure's mask, each with its Dice to the trusted mask."""
    truth = region.truth
    made: list[tuple[np.ndarray, str]] = [(truth, "trusted"), (mild_wobble(truth, rng), "mild")]
    kinds = [k for k in CORRUPTIONS if truth.any() or k == "blob"]
    for kind in rng.choice(kinds, size=n_errors):
        made.append((CORRUPTIONS[str(kind)](truth, rng), str(kind)))
    if region.model_map is not None:
        made.append((region.model_map >= 0.5, "model"))
    others = region.other_values()
    if others:
        made.append((region.label == others[rng.integers(len(others))], "other_structure"))
    return [Candidate(mask=mask, kind=kind, dice=dice(mask, truth)) for mask, kind in made]


def sample_pairs(
    found: Sequence[Candidate], rng: np.random.Generator, *, min_gap: float = 0.05
) -> list[tuple[Candidate, Candidate]]:
    """Pairs whose Dice to the truth differ by more than ``min_gap``, in random order."""
    pairs = []
    for i in range(len(found)):
        for j in range(i + 1, len(found)):
            if abs(found[i].dice - found[j].dice) > min_gap:
                a, b = (found[i], found[j]) if rng.random() < 0.5 else (found[j], found[i])
                pairs.append((a, b))
    return [pairs[k] for k in rng.permutation(len(pairs))]
