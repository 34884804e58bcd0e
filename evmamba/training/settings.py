"""The ``train`` section of a run config: every key, its default and the values it takes, declared once.

:data:`TRAIN_SETTINGS` is the only list of train keys; :func:`train_settings` checks a config's section
against it (an unknown key, or a value of the wrong kind, is a ``ValueError`` naming ``train.<key>``) and
completes it with the defaults. ``evmamba train``, ``evmamba evaluate``, ``evmamba preprocess`` and the
data builders all read the section through it, so a key added here is known everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.checks import is_number

__all__ = ["Setting", "TRAIN_DEFAULTS", "TRAIN_SETTINGS", "train_settings"]


@dataclass(frozen=True)
class Setting:
    """One ``train`` key: its default and the values it accepts.

    ``kind`` is ``"int"``, ``"number"`` (int or float), ``"bool"``, ``"str"`` or ``"numbers"`` (a list of
    numbers); ``minimum`` / ``maximum`` bound numbers (``below`` makes the maximum exclusive); ``nullable``
    also accepts ``null``; ``choices`` lists the accepted strings.
    """

    default: Any
    kind: str
    minimum: float | None = None
    maximum: float | None = None
    below: bool = False
    nullable: bool = False
    choices: tuple[str, ...] | None = None

    def describe(self) -> str:
        kinds = {"int": "an int", "number": "a number", "bool": "true or false", "str": "a string",
                 "numbers": "a list of numbers"}
        text = kinds[self.kind] if self.choices is None else f"one of {list(self.choices)}"
        if self.minimum is not None and self.maximum is not None:
            text += f" in [{self.minimum:g}, {self.maximum:g}{')' if self.below else ']'}"
        elif self.minimum is not None:
            text += f" >= {self.minimum:g}"
        return text + (" or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str) and (self.choices is None or value in self.choices)
        if self.kind == "numbers":
            return isinstance(value, (list, tuple)) and all(is_number(v) for v in value)
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            return False
        if self.kind == "number" and not is_number(value):
            return False
        if self.minimum is not None and value < self.minimum:
            return False
        if self.maximum is not None and (value > self.maximum or (self.below and value == self.maximum)):
            return False
        return True


#: Every key of the ``train`` section (documented in docs/training.md).
TRAIN_SETTINGS: dict[str, Setting] = {
    "epochs": Setting(10, "int", minimum=1),
    "batch_size": Setting(32, "int", minimum=1),
    "eval_batch_size": Setting(None, "int", minimum=1, nullable=True),  # None: 2 * batch_size
    "lr": Setting(2e-3, "number", minimum=0),
    "weight_decay": Setting(0.05, "number", minimum=0),
    "ssm_lr_scale": Setting(1.0, "number", minimum=0),
    "decay_embeddings": Setting(False, "bool"),
    "betas": Setting([0.9, 0.999], "numbers"),
    "eps": Setting(1e-8, "number", minimum=0),
    "warmup_epochs": Setting(0.5, "number", minimum=0),
    "warmup_steps": Setting(None, "int", minimum=0, nullable=True),
    "min_lr_ratio": Setting(0.05, "number", minimum=0, maximum=1),
    "grad_clip": Setting(1.0, "number", minimum=0, nullable=True),  # 0 or null: no clipping
    "grad_accum": Setting(1, "int", minimum=1),
    "label_smoothing": Setting(0.0, "number", minimum=0, maximum=1, below=True),
    # Validate, test and ship a moving average of the weights (decay per optimizer step); null: the weights.
    "ema_decay": Setting(None, "number", minimum=0, maximum=1, below=True, nullable=True),
    "seed": Setting(0, "int", minimum=0),
    "device": Setting("auto", "str"),
    "amp": Setting("bf16", "str", choices=("bf16", "none")),  # bf16 autocast on CUDA; CPU always runs fp32
    "workers": Setting(0, "int", minimum=0),  # DataLoader worker processes
    "preprocess_workers": Setting(None, "int", minimum=0, nullable=True),  # 0 or None: CPU count, at most 8
    # Token caches whose arrays take at most this many GB are loaded whole; larger ones are read per sample
    # from the file, so host memory does not grow with the data (0: always from the file; null: always whole).
    "cache_memory_gb": Setting(1.0, "number", minimum=0, nullable=True),
    # Hold out this share of the training split for validation (and best.pt) ...
    "val_fraction": Setting(0.0, "number", minimum=0, maximum=1, below=True),
    "val_split": Setting(None, "str", nullable=True),  # ... or validate on this split (e.g. SSC's "valid")
    "max_tokens": Setting(None, "int", minimum=1, nullable=True),  # random crop of training sequences
    # Batches by a token budget: length-sorted sequences grouped so that size x longest <= batch_tokens
    # (batch_size still caps the size); null: batches of batch_size sequences.
    "batch_tokens": Setting(None, "int", minimum=1, nullable=True),
    # Memory a run may plan to use, GB (10^9 bytes); null: 90 % of what the machine has free when it starts.
    "max_memory_gb": Setting(None, "number", minimum=0, nullable=True),
    # Settings chosen from the data (evmamba.training.auto): null = when the config has neither a binning
    # nor a model section; true = for every key the config leaves out; false = never.
    "auto": Setting(None, "bool", nullable=True),
    "allow_hflip": Setting(True, "bool"),  # whether augment.hflip_p may flip this dataset
    "allow_vflip": Setting(True, "bool"),  # whether augment.vflip_p may flip this dataset
    "test_every": Setting(1, "int", minimum=0),  # test every N epochs (and after the last); 0 = only at the end
    "log_every": Setting(20, "int", minimum=1),  # optimizer steps between JSONL step records
    "save_every": Setting(0, "int", minimum=0),  # also keep epoch_NNN.pt every N epochs (0 = only last/best)
}

#: The defaults alone, ``{key: default}``.
TRAIN_DEFAULTS: dict[str, Any] = {k: s.default for k, s in TRAIN_SETTINGS.items()}


def train_settings(cfg: Mapping) -> dict[str, Any]:
    """The ``train`` section of ``cfg`` checked against :data:`TRAIN_SETTINGS` and completed with the
    defaults (``eval_batch_size`` resolved to ``2 * batch_size`` when null).

    Raises ``ValueError`` naming the key for an unknown key (listing the valid ones) or a value of the wrong
    kind, e.g. ``config: key 'train.lr' must be a number >= 0; got 'abc'``.
    """
    from .data import section  # the one way of reading a config section

    given = section(cfg, "train")
    unknown = sorted(set(given) - set(TRAIN_SETTINGS))
    if unknown:
        raise ValueError(f"config: unknown key(s) {['train.' + k for k in unknown]}; valid: {sorted(TRAIN_SETTINGS)}")
    for key, value in given.items():
        setting = TRAIN_SETTINGS[key]
        if not setting.accepts(value):
            raise ValueError(f"config: key 'train.{key}' must be {setting.describe()}; got {value!r}")
    tc = {**TRAIN_DEFAULTS, **given}
    tc["eval_batch_size"] = tc["eval_batch_size"] or 2 * tc["batch_size"]
    return tc
