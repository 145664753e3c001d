"""From the datastore to the engine and back: items in, label versions out.

``datastore_items`` gives the engine each image with its best label (the resolver's
choice) and, when two or more users labeled it, each user's latest label;
``write_label_version`` turns a label on a trainer's grid into a version of the image,
restored to the image's own voxel grid, inside the trainer's method run. Every trainer that
writes labels (``aide``, ``stats``, ``em``) goes through it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from emlabel.labels import LabelKind, LabelVersion, Provenance
from emlabel.methods.em import EMItem, save_on_image_grid
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.runs import MethodRun
from emlabel.training.loading import LoadedSet

MIN_ANNOTATORS = 2
"""Users an image needs before their labels reach the engine as annotations."""


def datastore_items(datastore: VersionedDatastore, *, include_pseudo: bool = False) -> list[EMItem]:
    """Every image with its best label (None when it has none; a pseudo-label only with
    ``include_pseudo``) and its annotators' labels
    (:meth:`VersionedDatastore.annotator_labels`, from two users on), sorted by id."""
    items = []
    for image_id in sorted(datastore.list_images()):
        best = datastore.best_label(image_id, include_pseudo=include_pseudo)
        annotators = datastore.annotator_labels(image_id)
        annotations = (
            tuple(datastore.get_label_uri(image_id, v.tag) for v in annotators.values())
            if len(annotators) >= MIN_ANNOTATORS
            else ()
        )
        items.append(
            EMItem(
                id=image_id,
                image=datastore.require_image(image_id),
                label=datastore.get_label_uri(image_id, best.tag) if best else None,
                human=best is not None and best.kind == LabelKind.HUMAN,
                pseudo=best is not None and best.kind == LabelKind.PSEUDO,
                tag=best.tag if best else None,
                annotations=annotations,
            )
        )
    return items


def write_label_version(
    run: MethodRun,
    datastore: VersionedDatastore,
    *,
    data: LoadedSet,
    index: int,
    label: torch.Tensor | np.ndarray,
    provenance: Provenance,
    workdir: Path,
) -> LabelVersion:
    """Store ``label`` (on ``data``'s grid, item ``index``) as a new version in ``run``."""
    image_id = data.ids[index]
    image = datastore.require_image(image_id)
    path = save_on_image_grid(
        label,
        data,
        index,
        image=image,
        path=workdir / f"{image_id}.{provenance.source}.{index}.nii.gz",
        settings=datastore.settings,
    )
    return run.add_version(image_id, path, provenance)
