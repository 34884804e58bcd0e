"""Models: the :class:`Mamba` layer and the classifiers built on it."""

from .mamba import Mamba

__all__ = ["Mamba"]
