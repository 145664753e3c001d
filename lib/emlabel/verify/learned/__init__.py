"""The learned verifier: small MONAI networks trained on corrupted trusted labels.

``inputs`` (the crop the networks see), ``corrupt`` (errors of any binary mask), ``samples``
(self-supervised examples from trusted labels), ``model`` (the two heads, their training and
checkpoint), ``selection`` (which verifier the app uses, and why).
"""

from emlabel.verify.learned.model import (
    LearnedVerifier,
    LearnedVerifierOptions,
    train_learned_verifier,
)
from emlabel.verify.learned.samples import TrustedLabel

__all__ = ["LearnedVerifier", "LearnedVerifierOptions", "TrustedLabel", "train_learned_verifier"]
