"""Models: the :class:`Mamba` layer and the classifiers built on it."""

from .classifier import EventClassifier
from .mamba import Mamba

__all__ = ["EventClassifier", "Mamba"]
