"""How many tokens a recording gives at several time-bin widths, without binning it once per width.

Choosing a bin width from the data (:mod:`evmamba.training.auto`) needs the token count of many recordings
at a ladder of widths. :func:`bin_events` merges repeated token ids inside a bin, so the number of tokens at
width ``b`` is the number of distinct pairs ``(bin index, token id)`` with ``bin index = (t - t0) // b`` and
``t0`` the recording's first event (DESIGN §5; the bins are aligned to it even when a time crop removes
it). :func:`token_counts` applies the binning's crops and filters once (through :func:`bin_events` with
``bin_us = 0``) and then counts those pairs for every width in one pass each; the result equals
``bin_events(events, sensor_size, cfg with bin_us=b).num_tokens`` for every ``b`` (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from numba import njit

from .binning import BinningConfig, _check_cfg, bin_events, vocab_size


@njit(cache=True, nogil=True)
def _distinct_pairs(t, ids, t0, width, last_bin):
    """Number of distinct ``((t - t0) // width, id)`` pairs of time-sorted events; ``last_bin`` (vocab,)
    int64 is scratch, filled with -1 by the caller. Bins only grow along sorted times, so a pair is new
    exactly when its id was last seen in an earlier bin."""
    n = 0
    for i in range(t.size):
        b = (t[i] - t0) // width
        tok = ids[i]
        if last_bin[tok] != b:
            last_bin[tok] = b
            n += 1
    return n


def token_counts(events: np.ndarray, sensor_size, cfg: BinningConfig, bin_widths: Sequence[int],
                 source: str = "events") -> np.ndarray:
    """Tokens that ``events`` give under ``cfg`` with each bin width of ``bin_widths`` (µs; 0 = one token
    per event): an ``(len(bin_widths),)`` int64 array. ``cfg.bin_us`` itself is ignored; its crops, filters,
    downsampling and polarity apply. Raises as :func:`bin_events` does for invalid events, and
    ``ValueError`` for a negative or non-integer width."""
    cfg = _check_cfg(cfg, source)
    widths = []
    for b in bin_widths:
        if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer)) or b < 0:
            raise ValueError(f"{source}: bin widths must be integers >= 0 (µs); got {b!r}")
        widths.append(int(b))
    out = np.zeros(len(widths), np.int64)
    plain = bin_events(events, sensor_size, replace(cfg, bin_us=0), source=source)  # crops and filters
    if plain.num_tokens == 0:
        return out
    t0 = np.int64(events["t"][0])
    ids = plain.tokens.astype(np.int64)
    scratch = np.empty(vocab_size(sensor_size, cfg), np.int64)
    for j, b in enumerate(widths):
        if b == 0:
            out[j] = plain.num_tokens
            continue
        scratch.fill(-1)
        out[j] = _distinct_pairs(plain.t, ids, t0, np.int64(b), scratch)
    return out


__all__ = ["token_counts"]
