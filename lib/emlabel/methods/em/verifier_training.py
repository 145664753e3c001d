"""Train the learned verifier from the datastore's trusted labels (human finals).

Library code shared by the ``verifier`` trainer and the ``em`` trainer. The trusted labels
are the human finals on the app's grid; with a learner (a segmentation model), the
ensemble's mean masks are the model maps the networks learn to compare with, and the model's
own misses are "wrong" examples. After training, the hand-built verifier scores the very same
validation cases (features against the same ensemble, population of the training finals), so
that :func:`emlabel.verify.learned.selection.choose_verifier` compares like with like.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emlabel.errors import InvalidRequestError
from emlabel.methods.em.critic import grid_multiple
from emlabel.methods.em.items import EMItem
from emlabel.methods.em.learner import Learner
from emlabel.settings import AppSettings
from emlabel.training.loading import load_items
from emlabel.verify import LabelVerifier, ShapePopulation, structure_features
from emlabel.verify.expert import mean_masks
from emlabel.verify.learned import (
    LearnedVerifier,
    LearnedVerifierOptions,
    TrustedLabel,
    train_learned_verifier,
)
from emlabel.verify.learned.selection import HAND_BUILT, LEARNED

logger = logging.getLogger(__name__)

VERIFIER_MODEL_FILE = "verifier.pt"
RETRAIN_AFTER_NEW_FINALS = 3
"""The ``em`` trainer retrains the learned verifier once this many finals were added."""


def human_items(items: Sequence[EMItem]) -> list[EMItem]:
    """The items whose best label is a human final: the learned verifier's trusted labels."""
    return [item for item in items if item.label and item.human]


def final_key(item: EMItem) -> str:
    """``image:tag``, how a verifier remembers the finals it learned from (a final saved again
    for the same image keeps its tag, so it does not count as new)."""
    return f"{item.id}:{item.tag}"


def train_from_items(
    items: Sequence[EMItem],
    learner: Learner | None,
    *,
    settings: AppSettings,
    options: LearnedVerifierOptions,
    on_step: Callable[[int, float], None] | None = None,
) -> LearnedVerifier:
    """Train on the human finals of ``items``; 4xx when there are none."""
    finals = human_items(items)
    if not finals:
        raise InvalidRequestError(
            "the learned verifier trains on human finals: save at least one final label first"
        )
    data = load_items(
        [item.as_dict() for item in finals],
        settings=settings,
        multiple_of=grid_multiple(learner),
    )
    members = learner.members(data) if learner is not None else [[] for _ in finals]
    label_map = settings.label_map
    trusted = [
        TrustedLabel(
            image=data.images[i].numpy(),
            label=data.labels[i].numpy().astype(np.uint8),
            model_maps=mean_masks(members[i], label_map),
        )
        for i in range(len(finals))
    ]
    try:
        verifier = train_learned_verifier(
            trusted, label_map=label_map, options=options, on_step=on_step
        )
    except ValueError as e:  # options or data the networks cannot take: the caller's input
        raise InvalidRequestError(f"cannot train the learned verifier: {e}") from e
    _score_validation_hand_built(verifier, trusted, members, settings=settings)
    verifier.validation["trained_on"] = [final_key(item) for item in finals]
    return verifier


def _score_validation_hand_built(
    verifier: LearnedVerifier,
    trusted: Sequence[TrustedLabel],
    members: Sequence[Sequence[np.ndarray]],
    *,
    settings: AppSettings,
) -> None:
    """Record both verifiers' scores of every validation case in ``verifier.validation``."""
    cases = verifier.validation.get("cases", [])
    label_map = settings.label_map
    held_out = (
        {c["trusted_index"] for c in cases} if verifier.validation.get("held_out_images") else set()
    )
    population = ShapePopulation.fit(
        [
            f
            for i, t in enumerate(trusted)
            if i not in held_out
            for f in structure_features(
                t.label, members[i], spacing=settings.target_spacing, labels=label_map,
                image=t.image[0],
            ).values()
        ]
    )  # fmt: skip
    hand = LabelVerifier()
    scores: dict[str, list[float]] = {HAND_BUILT: [], LEARNED: []}
    for case in cases:
        i, structure = case["trusted_index"], case["structure"]
        features = structure_features(
            case["label"], members[i], spacing=settings.target_spacing,
            labels={structure: label_map[structure]}, image=trusted[i].image[0],
        )  # fmt: skip
        scores[HAND_BUILT].append(hand.score(features[structure], population).probability_wrong)
        scores[LEARNED].append(float(case["learned"]))
    verifier.validation |= {f"{k}_scores": v for k, v in scores.items()}
    verifier.validation["wrong"] = [bool(c["wrong"]) for c in cases]


def load_learned(model_dir: Path, settings: AppSettings) -> LearnedVerifier | None:
    """The stored learned verifier if it fits the app's data (structures, dimensions,
    channels), else None with the reason logged; an unreadable file is a CheckpointError."""
    path = Path(model_dir) / VERIFIER_MODEL_FILE
    if not path.exists():
        return None
    verifier = LearnedVerifier.load(path)
    fits = {
        "structures": verifier.label_map == dict(settings.label_map),
        "spatial_dims": verifier.spatial_dims == settings.spatial_dims,
        "in_channels": verifier.image_channels == settings.in_channels,
    }
    misfit = [name for name, ok in fits.items() if not ok]
    if misfit:
        logger.warning(
            "%s was trained for other %s than the app's; ignored until 'verifier' is trained "
            "again", path.name, ", ".join(misfit),
        )  # fmt: skip
        return None
    return verifier


def is_stale(
    verifier: LearnedVerifier | None, items: Sequence[EMItem], *, model_available: bool
) -> bool:
    """True once :data:`RETRAIN_AFTER_NEW_FINALS` finals are newer than the verifier's
    training, or when a model exists now and the verifier was trained without one (it has
    never seen model maps). False without a verifier: the first one is trained on request
    (``POST /train/verifier``), the ``em`` trainer only keeps it up to date."""
    if verifier is None:
        return False
    if model_available and not verifier.with_model:
        return True
    known = set(verifier.validation.get("trained_on", []))
    new = [item for item in human_items(items) if final_key(item) not in known]
    return len(new) >= RETRAIN_AFTER_NEW_FINALS


def summary(verifier: LearnedVerifier) -> dict[str, Any]:
    """The validation figures for train stats and /info (no per-case lists)."""
    keep = ("auroc", "pair_accuracy", "n_labels", "n_wrong", "n_pairs", "held_out_images", "note")
    out = {k: verifier.validation.get(k) for k in keep}
    out["n_trusted"] = verifier.n_trusted
    return out
