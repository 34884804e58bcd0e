"""Argument checks for public boundaries: predicates, and checks that raise an error naming the argument.

``TypeError`` means a value of the wrong kind, ``ValueError`` a value of the right kind out of range. The
``name`` given to a check is how its message names the argument, with any context a user needs to find it,
e.g. ``"d_model"`` or ``"EventClassifier: argument 'd_model'"``. Booleans are never numbers here (``True``
is an int to Python, but a flag passed where a size belongs is a mistake).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

import numpy as np


def is_int(value: Any) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any, finite: bool = True) -> bool:
    """A Python or numpy int or float, not a bool (and finite, unless ``finite`` is false)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return not finite or math.isfinite(value)


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum``; ``TypeError`` / ``ValueError`` otherwise."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int >= {minimum}; got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}")
    return int(value)


def check_number(value: Any, name: str, minimum: float = -math.inf, maximum: float = math.inf, *,
                 open_min: bool = False, open_max: bool = False) -> float:
    """``value`` as a ``float`` if it is a finite number in ``[minimum, maximum]`` (an end is excluded with
    ``open_min`` / ``open_max``): ``TypeError`` for anything but a number, ``ValueError`` for NaN, an infinity
    or a number outside the interval (naming it)."""
    if not is_number(value, finite=False):
        raise TypeError(f"{name} must be a finite number; got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value}")
    below = value < minimum or (open_min and value == minimum)
    above = value > maximum or (open_max and value == maximum)
    if below or above:
        interval = f"{'(' if open_min else '['}{minimum:g}, {maximum:g}{')' if open_max else ']'}"
        raise ValueError(f"{name} must lie in {interval}; got {value:g}")
    return value




def section_kwargs(cls, d: Any, source: str, *, expected: str = "a mapping",
                   hint: Callable[[list[str]], str] | None = None) -> dict[str, Any]:
    """A config section ``d`` (plain mapping or OmegaConf node) as keyword arguments of the dataclass ``cls``:
    ``ValueError`` naming ``source`` when it is not a mapping or has keys ``cls`` does not know (``hint``
    may add advice about the unknown keys)."""
    valid = sorted(cls.__dataclass_fields__)
    if hasattr(d, "_metadata"):
        from omegaconf import OmegaConf  # only when given an OmegaConf node: the stream loop never imports it

        d = OmegaConf.to_container(d, resolve=True)
    if not isinstance(d, Mapping):
        raise ValueError(f"{source}: expected {expected} with keys {valid}; got {d!r}")
    unknown = sorted(str(k) for k in d if k not in cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; valid: {valid}{hint(unknown) if hint else ''}")
    return dict(d)


def validated_from_mapping(cls, d: Any, source: str, what: str):
    """An instance of the frozen dataclass ``cls`` from the config section ``d`` (plain mapping or OmegaConf
    node; missing keys take the defaults), validated by ``cls._validate(source)`` first so that every error
    names the caller's ``source`` rather than the dataclass's own: ``TypeError`` when ``d`` is not a mapping
    (``what`` says of what: "binning options"), ``ValueError`` naming unknown keys and the known ones."""
    if hasattr(d, "_metadata") and hasattr(d, "_get_node"):  # an OmegaConf container
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(d, resolve=True)
    if not isinstance(d, Mapping):
        raise TypeError(f"{source}: expected a mapping of {what}; got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    obj = object.__new__(cls)  # unvalidated: the fields as given, checked under the caller's name
    for f in fields(cls):
        object.__setattr__(obj, f.name, d.get(f.name, f.default))
    obj._validate(source)
    return cls(**{f.name: getattr(obj, f.name) for f in fields(cls)})


__all__ = ["check_int", "check_number", "is_int", "is_number", "section_kwargs", "validated_from_mapping"]
