"""What the EM engine works on: images, their current best labels and their annotators'
labels, as files."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class EMItem:
    """One image: its file, its best label's file (None: unlabeled), and whether a human made it.

    The engine never overwrites these files; corrections and pseudo-labels it makes are new
    files in its work folder, and the caller decides what to store.
    """

    id: str
    image: str
    label: str | None = None
    human: bool = False
    tag: str | None = None
    """Name of the label version (provenance: the parent of a correction)."""
    pseudo: bool = False
    """The label is a model's prediction for an image without one (never a reference)."""
    annotations: tuple[str, ...] = ()
    """Files of the latest label of each user (human or imported) when two or more users
    labeled the image: the annotators whose consensus and agreement the critic uses."""

    def with_label(self, label: str, tag: str, *, pseudo: bool = False) -> EMItem:
        return dataclasses.replace(self, label=label, human=False, tag=tag, pseudo=pseudo)

    def as_dict(self) -> dict[str, str]:
        """``{"id", "image", "label"?}``, the item format of the trainers and loaders."""
        return {"id": self.id, "image": self.image} | ({"label": self.label} if self.label else {})
