"""evmamba: event-camera and spike-data classification with selective state-space layers.

Seven layers, bottom to top; a module imports only from its own layer or below (tests/test_layers.py):

1. :mod:`evmamba.core` -- basics: the event dtype and sensor size, argument checks, atomic writes, JSON
   output, config files;
2. :mod:`evmamba.kernels` -- the numerics of scan and step: PyTorch references, numba and Triton backends;
3. :mod:`evmamba.pipeline` -- events in and out: readers and writers of event files, checks, filters,
   augmentation, binning into tokens with time steps; :mod:`evmamba.render` -- pictures of events;
4. :mod:`evmamba.model` -- the :class:`~evmamba.model.Mamba` layer, embeddings, the classifier, checkpoints;
5. :mod:`evmamba.datasets` -- datasets, token caches, dataset wrappers and batching;
6. :mod:`evmamba.training`, :mod:`evmamba.evaluation`, :mod:`evmamba.streaming` -- training, evaluation
   and the real-time stream loop (which never imports training);
7. :mod:`evmamba.cli` and :mod:`evmamba.bench` -- the ``evmamba`` command and its benchmarks.
"""

__version__ = "0.1.0"
