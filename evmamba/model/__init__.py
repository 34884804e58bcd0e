"""evmamba.model (layer 4): the :class:`Mamba` layer, embeddings, pooling, the classifiers built on it and their
checkpoints (:mod:`.checkpoint`)."""

from .classifier import ClassifierConfig, EventClassifier
from .mamba import Mamba

__all__ = ["ClassifierConfig", "EventClassifier", "Mamba"]
