"""EM relabeling (ScaleMAI-style): E-step decisions from verifier + expert, typed options."""

from emlabel.methods.em.decide import Decision, decide
from emlabel.methods.em.options import EMOptions

__all__ = ["Decision", "EMOptions", "decide"]
