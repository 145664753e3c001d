"""EM relabeling (ScaleMAI-style) as library code: critic, E-step, loop, learner interface.

No MONAI Label or datastore here: the loop works on :class:`EMItem` files and a
:class:`Learner` (:mod:`emlabel.learners`); the ``em`` trainer adapts the datastore to it.
"""

from emlabel.methods.em.critic import Critic, CriticRun
from emlabel.methods.em.decide import Action, Decision, decide
from emlabel.methods.em.estep import EStepResult, e_step, majority, model_candidates
from emlabel.methods.em.items import EMItem
from emlabel.methods.em.learner import FitSpec, Learner
from emlabel.methods.em.loop import (
    Correction,
    EMLoop,
    EMResult,
    PseudoLabel,
    pending_tag,
    save_on_image_grid,
)
from emlabel.methods.em.options import EMOptions
from emlabel.methods.em.reviews import (
    operating_point,
    random_reviews,
    review_record,
    scored_reviews,
    structure_reviews,
)
from emlabel.methods.em.state import EMFiles

__all__ = [
    "Action",
    "Correction",
    "Critic",
    "CriticRun",
    "Decision",
    "EMFiles",
    "EMItem",
    "EMLoop",
    "EMOptions",
    "EMResult",
    "EStepResult",
    "FitSpec",
    "Learner",
    "PseudoLabel",
    "decide",
    "e_step",
    "majority",
    "model_candidates",
    "operating_point",
    "pending_tag",
    "random_reviews",
    "review_record",
    "save_on_image_grid",
    "scored_reviews",
    "structure_reviews",
]
