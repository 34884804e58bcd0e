"""Event-level mixing of two training samples, with the mixed (soft) label it calls for.

:func:`mix_events` merges part of a recording B into a recording A -- a random share of B's events
(``"subset"``, in the spirit of EventDrop/EventMix), B's events inside a random rectangle (``"region"``) or
inside a random time window (``"time"``) -- after shifting B in time so that it starts when A starts. It
returns the merged events and ``lam``, the share of the merged events that came from B; the sample's target
is then the soft label ``(1 - lam) * onehot(a) + lam * onehot(b)`` (:func:`soft_label`), trained with
cross-entropy against soft targets.

:class:`~evmamba.datasets.wrappers.EventMixDataset` does this for a dataset of recordings: it augments each sample with
:func:`~evmamba.pipeline.augment.augment_events`, mixes it with probability ``mix_p`` with a partner drawn
from the same split, and returns ``(events, soft label)``. :func:`as_soft_label` is the check that the batch
collate functions apply to such labels.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.events import check_sensor_size
from .augment import (
    MIX_MODES,
    _check_rng,
    _range,
    in_box,
    random_box,
)
from .events import validate_events


def mix_events(a: np.ndarray, b: np.ndarray, sensor_size, rng, *, mode: str = "subset", ratio=(0.2, 0.5),
               replace: bool = True, source: str = "mix") -> tuple[np.ndarray, float]:
    """Merge part of recording ``b`` into recording ``a``; returns ``(events, lam)``.

    ``b`` is first shifted in time so that its first event falls on ``a``'s first event (integer µs; with an
    empty ``a`` it is not shifted). A share ``r``, uniform in ``ratio = (low, high)`` (0 < low <= high < 1),
    then picks what ``b`` gives:

    * ``"subset"``: each of ``b``'s events independently with probability ``r``;
    * ``"region"``: ``b``'s events inside a random rectangle of ``r`` of the sensor area
      (:func:`~evmamba.pipeline.augment.random_box`; a band of channels on a 1-D sensor);
    * ``"time"``: ``b``'s events inside a random window of ``r`` of the common duration (from the start of
      ``a`` to the later of the two ends).

    With ``replace`` (the default), ``a``'s events in the same subset (each dropped with probability ``r``),
    rectangle or window are removed, so the merged recording keeps ``a``'s event density; otherwise all of
    ``a`` is kept. The merged events are in time order (``a``'s first at equal timestamps) and
    ``lam = n_from_b / n_merged`` (0 for an empty result). Draws, in order: ``r``, then the subset masks,
    the rectangle or the window start.
    """
    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    validate_events(a, sensor_size, f"{source}: first sample")
    validate_events(b, sensor_size, f"{source}: second sample")
    rng = _check_rng(rng, source)
    if mode not in MIX_MODES:
        raise ValueError(f"{source}: argument 'mode' must be one of {MIX_MODES}; got {mode!r}")
    lo, hi = _range(ratio, "ratio", source, lo=0.0, hi=1.0)
    b = b.copy()
    if a.size and b.size:
        b["t"] += int(a["t"][0]) - int(b["t"][0])
    r = float(rng.uniform(lo, hi)) if hi > lo else lo
    if mode == "subset":
        take_b = rng.random(b.size) < r
        keep_a = rng.random(a.size) >= r if replace else np.ones(a.size, dtype=bool)
    elif mode == "region":
        box = random_box(sensor_size, r, rng)
        take_b = in_box(b, box)
        keep_a = ~in_box(a, box) if replace else np.ones(a.size, dtype=bool)
    else:
        both = [arr["t"][[0, -1]] for arr in (a, b) if arr.size]
        if both:
            t0 = int(both[0][0])
            duration = max(int(v[1]) for v in both) - t0 + 1
        else:
            t0, duration = 0, 1
        length = math.floor(r * duration + 0.5)
        start = int(rng.integers(t0, t0 + duration - length, endpoint=True))
        take_b = (b["t"] >= start) & (b["t"] < start + length)
        in_a = (a["t"] >= start) & (a["t"] < start + length)
        keep_a = ~in_a if replace else np.ones(a.size, dtype=bool)
    part_a, part_b = a[keep_a], b[take_b]
    merged = np.concatenate([part_a, part_b])
    merged = merged[np.argsort(merged["t"], kind="stable")]  # two sorted runs: a's events first at ties
    lam = part_b.size / merged.size if merged.size else 0.0
    return merged, float(lam)


def soft_label(label_a: int, label_b: int, lam: float, n_classes: int) -> np.ndarray:
    """``(1 - lam) * onehot(label_a) + lam * onehot(label_b)`` as a float32 vector of ``n_classes``."""
    if isinstance(n_classes, (bool, np.bool_)) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"soft_label: argument 'n_classes' must be a positive integer; got {n_classes!r}")
    for name, v in (("label_a", label_a), ("label_b", label_b)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not 0 <= v < n_classes:
            raise ValueError(f"soft_label: argument '{name}' must be an integer in [0, {n_classes}); got {v!r}")
    if not isinstance(lam, (int, float, np.integer, np.floating)) or not 0.0 <= lam <= 1.0:
        raise ValueError(f"soft_label: argument 'lam' must be a number in [0, 1]; got {lam!r}")
    out = np.zeros(int(n_classes), np.float32)
    out[int(label_a)] += 1.0 - float(lam)
    out[int(label_b)] += float(lam)
    return out


def as_soft_label(label, source: str = "label"):
    """A label that is a soft target -- a 1-D float array or tensor of non-negative class weights summing to
    1 -- as a float32 numpy vector; ``None`` for anything else (integer labels are checked by the caller).
    ``ValueError`` names ``source`` for a float vector that is not a distribution."""
    if hasattr(label, "detach") and hasattr(label, "numpy"):  # a torch tensor, without importing torch here
        label = label.detach().cpu().numpy()
    if not isinstance(label, np.ndarray) or label.ndim != 1 or not np.issubdtype(label.dtype, np.floating):
        return None
    if label.size == 0 or not np.isfinite(label).all() or (label < 0).any() or abs(float(label.sum()) - 1.0) > 1e-4:
        raise ValueError(f"{source}: a soft label must hold non-negative class weights summing to 1; got {label!r}")
    return label.astype(np.float32, copy=False)


