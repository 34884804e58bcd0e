"""evmamba.evaluation (layer 6): how good a model is, and what it has to beat.

* :mod:`.online` -- a checkpoint's accuracy on full test streams, per class and as events arrive
  (``evmamba evaluate``);
* :mod:`.histograms` -- event-count histograms over spatial cells x time slices x polarity;
* :mod:`.neighbours` -- cosine nearest neighbours in bounded-memory blocks, the k-NN vote;
* :mod:`.nn_baseline` -- the nearest-neighbour baseline of a config (splits as in training, settings chosen
  on validation; ``evmamba baseline``).
"""
