"""evmamba.training (layer 6): ``evmamba train``'s library, each part in its own small module.

* :mod:`.loop` -- the training loop: config, data, model, epochs, checkpoints and the selected model;
* :mod:`.sections` -- the whole config checked before any work (each section by the code that reads it);
  :mod:`.settings` -- the ``train`` section's keys; :mod:`.auto` -- settings chosen from the data;
* :mod:`.data` -- which datasets, caches and wrappers serve each split, and the loaders over them;
* :mod:`.models` -- building a model from a config, and feeding it a batch;
* :mod:`.memory` -- the memory plan of a run; :mod:`.optim` -- AdamW groups and the warmup + cosine schedule;
* :mod:`.reproducibility` -- seeds and random-generator states;
* :mod:`.distributed` -- ``torchrun`` / DDP set-up and reductions;
* :mod:`.metrics` -- CSV, JSONL and TensorBoard logging; :mod:`.plots` -- PNG figures.

Checkpoint I/O lives with the model (:mod:`evmamba.model.checkpoint`), so that inference never imports this
package.
"""
