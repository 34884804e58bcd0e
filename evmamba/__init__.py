"""evmamba: event-camera and spike-data classification with selective state-space layers.

Sub-packages, with dependencies pointing one way
(``datasets`` -> ``pipeline`` -> ``model`` -> ``kernels``):

* :mod:`evmamba.datasets` -- event-file readers, tonic datasets, the synthetic dataset.
* :mod:`evmamba.pipeline` -- binning of events into tokens and per-token time steps, batching, streaming.
* :mod:`evmamba.model` -- the :class:`~evmamba.model.Mamba` layer and classifiers built on it.
* :mod:`evmamba.kernels` -- discretization, reference scans and Triton kernels.
"""

__version__ = "0.1.0"
