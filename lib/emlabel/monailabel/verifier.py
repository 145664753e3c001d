"""The verifier in the app: trainer ``verifier`` (the learned one) and scoring ``verifier``.

Thin adapters over :mod:`emlabel.methods.em.verifier_training` and the critic. The trainer
learns from the human finals (no new annotation; a segmentation model is used when one
exists, never required) and publishes ``model/verifier.pt`` in one method run. The scoring
judges the machine labels with the verifier chosen by
:func:`emlabel.verify.learned.selection.choose_verifier` and stores its probability, reasons
and both verifiers' scores in the image info the review strategy reads; only the labels
whose inputs changed since their last score are judged again (:mod:`emlabel.verify.score_cache`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.scoring import ScoringMethod

from emlabel.checkpoints import model_ref
from emlabel.distributed import world
from emlabel.errors import InvalidRequestError
from emlabel.labels.provenance import now_iso
from emlabel.learners import load_learner
from emlabel.methods.em import Critic, EMFiles, scored_reviews, structure_reviews
from emlabel.methods.em.critic import MIN_HUMAN_FOR_POPULATION
from emlabel.methods.em.learner import Learner
from emlabel.methods.em.verifier_training import (
    VERIFIER_MODEL_FILE,
    load_learned,
    summary,
    train_from_items,
)
from emlabel.monailabel.datastore import VersionedDatastore
from emlabel.monailabel.registry import METHOD_BY_NAME
from emlabel.monailabel.review import VERIFIER_INFO_KEY
from emlabel.monailabel.tasks import OptionsTrainTask
from emlabel.monailabel.versions import datastore_items
from emlabel.settings import AppSettings, settings_to_dict
from emlabel.verify.learned import LearnedVerifierOptions
from emlabel.verify.score_cache import (
    KEY_FIELD,
    ScoringContext,
    current_keys,
    force_option,
    records_digest,
    stale_images,
)

logger = logging.getLogger(__name__)


def segmentation_learner(model_dir: Path, settings: AppSettings) -> Learner | None:
    """The served segmentation model as the critic's learner, None before it is trained."""
    if not (model_dir / METHOD_BY_NAME["segmentation"].model_file).exists():
        return None
    return load_learner("segmentation", settings=settings, model_dir=model_dir)


class VerifierTrainTask(OptionsTrainTask):
    """Trainer ``verifier``: the learned verifier from corrupted human finals."""

    REQUEST_KEYS: tuple[str, ...] = (
        "steps",
        "batch_size",
        "learning_rate",
        "errors_per_region",
        "bad_dice",
        "model_dropout",
        "seed",
    )
    OPTION_NAME = "verifier"

    def default_options(self, settings: AppSettings) -> Any:
        return LearnedVerifierOptions(seed=settings.seed)

    def __call__(self, request: dict[str, Any], datastore: VersionedDatastore) -> dict[str, Any]:
        options = self.parse_request(request)
        model_dir = self.model_path.parent
        learner = segmentation_learner(model_dir, self._settings)
        started = now_iso()
        with datastore.begin_run("verifier", stats_path=self.stats_path) as run:
            verifier = train_from_items(
                datastore_items(datastore), learner, settings=self._settings, options=options
            )
            meta = {"trained_at": now_iso(), "settings": settings_to_dict(self._settings),
                    "with_model": learner is not None}  # fmt: skip
            checksum = run.stage_checkpoint(
                self.model_path, verifier.state_dict(), verifier.meta() | meta
            )
            stats = {
                "state": "DONE",
                "start_ts": started,
                "options": dataclasses.asdict(options),
                "with_segmentation_model": learner is not None,
                "validation": summary(verifier),
                "model_sha256": checksum,
            }
            return self.write_stats(stats, run=run)


class VerifierScoring(ScoringMethod):
    """Scoring ``verifier``: each labeled image's probability of a wrong label, with reasons.

    Judges only the labels whose inputs changed since their last score (the key in
    :mod:`emlabel.verify.score_cache`), or all with the request option ``force``. Under
    torchrun the critic's per-image work is sharded and rank 0 stores the scores.
    """

    DISTRIBUTED = True

    def __init__(self, *, settings: AppSettings, model_path: str) -> None:
        super().__init__("Label verifier: probability that each image's best label is wrong")
        self.settings = settings
        self.model_path = Path(model_path)
        self.files = EMFiles(self.model_path.parent)

    def context(self) -> ScoringContext:
        """The models, reviews and iteration every score of a pass now depends on."""
        return ScoringContext(
            model=model_ref(self.model_path),
            learned=model_ref(self.model_path.parent / VERIFIER_MODEL_FILE),
            reviews=records_digest(self.files.load_reviews()),
            iteration=self.files.iteration() + 1,  # the reviews it routes feed the next one
        )

    def pending(self, datastore: VersionedDatastore) -> dict[str, str]:
        """Image id -> new key of every label to judge (none before a model exists): what
        the app checks before it starts a scoring process on its own."""
        context = self.context()
        if not context.ready:
            return {}
        return stale_images(datastore.image_states(), context, info_key=VERIFIER_INFO_KEY)

    def __call__(self, request: dict[str, Any], datastore: VersionedDatastore) -> dict[str, Any]:
        force = force_option(request)
        context = self.context()
        if not context.ready:
            raise InvalidRequestError(
                "the verifier needs a model: train 'verifier' (from the finals alone) or "
                "'segmentation' / 'em' first"
            )
        states = datastore.image_states()
        stale = stale_images(states, context, info_key=VERIFIER_INFO_KEY, force=force)
        if stale:
            self._judge(datastore, stale, context)
            states = datastore.image_states()
        judged = current_keys(states, context)
        logger.info(
            "verifier: judged %d label(s); %d score(s) were current",
            len(stale),
            len(judged) - len(stale),
        )
        return {
            image_id: info[VERIFIER_INFO_KEY]["score"]
            for image_id, (info, _) in sorted(states.items())
            if image_id in judged and isinstance(info.get(VERIFIER_INFO_KEY), dict)
        }

    def _judge(
        self, datastore: VersionedDatastore, stale: dict[str, str], context: ScoringContext
    ) -> None:
        """Run the critic over the stale labels (and the human ones, its shape reference)
        and store each stale image's verdict with its key."""
        model_dir = self.model_path.parent
        learner = segmentation_learner(model_dir, self.settings)
        learned = load_learned(model_dir, self.settings)
        records = self.files.load_reviews()
        critic = Critic(
            settings=self.settings, reviews=structure_reviews(records), learned=learned,
            review_scores=scored_reviews(records),
        )  # fmt: skip
        # pseudo-labels too: the ones EM made are machine labels a human may need to see
        items = datastore_items(datastore, include_pseudo=True)
        if sum(item.human for item in items) >= MIN_HUMAN_FOR_POPULATION:
            # the shape reference is the human labels: the others judged need not be loaded
            items = [item for item in items if item.human or item.id in stale]
        run = critic.run(items, learner)
        learned_ref = context.learned
        for image_id in run.machine_ids:
            if image_id not in stale or not world().main:  # under torchrun rank 0 writes
                continue
            info = run.info(
                image_id, iteration=context.iteration, model=context.model,
                learned_model=learned_ref, action=None,
            ) | {KEY_FIELD: stale[image_id]}  # fmt: skip
            datastore.update_image_info(image_id, {VERIFIER_INFO_KEY: info})
