"""Pieces of ``evmamba train`` and ``evmamba evaluate``, each in its own small module.

* :mod:`.data` -- datasets, samplers and loaders for token and frame models;
* :mod:`.models` -- building a model from a config or a checkpoint, and feeding it a batch;
* :mod:`.optim` -- AdamW parameter groups and the warmup + cosine schedule;
* :mod:`.checkpoint` -- atomic checkpoints that load with ``torch.load(..., weights_only=True)``;
* :mod:`.reproducibility` -- seeds and random-generator states;
* :mod:`.distributed` -- ``torchrun`` / DDP set-up and reductions;
* :mod:`.metrics` -- CSV, JSONL and TensorBoard logging; :mod:`.plots` -- PNG figures.
"""
