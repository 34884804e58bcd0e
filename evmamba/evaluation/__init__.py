"""Evaluation that needs no trained model: the nearest-neighbour baseline of any dataset.

* :mod:`.histograms` -- event-count histograms over spatial cells x time slices x polarity;
* :mod:`.neighbours` -- cosine nearest neighbours in bounded-memory blocks, the k-NN vote;
* :mod:`.nn_baseline` -- the baseline of a config (splits as in training, settings chosen on validation).
"""
