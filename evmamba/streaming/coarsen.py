"""Coarser time bins for a backlog: merge a run of tokens into bins ``factor`` times wider, on the fly.

When compute falls behind under the ``coarsen`` policy, the loop takes the whole backlog, bins it as usual
and then merges repeated token ids inside wider bins ``[origin + j * width, origin + (j + 1) * width)``
(aligned to the recording's first event, like the binner's own bins). A merged token keeps the time of its
first occurrence and the sum of the counts; tokens keep the order of their first occurrence; Δt is
recomputed between the merged tokens. When ``width`` is a multiple of the binning's ``bin_us``, this is
exactly what the binner would give with ``bin_us = width`` on those events -- except that a wide bin cut by
the end of the backlog is split in two. Fewer tokens means less compute per event: the model sees larger
counts and gaps than it was trained on, so accuracy may drop while the loop catches up.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..pipeline.binning import TokenSequence


@njit(cache=True, nogil=True)
def _merge(tok, cnt, t, origin, width, stamps, slots, out_tok, out_cnt, out_t, stamp):
    """Merge repeated ids inside each wide bin; returns ``(n merged tokens, last stamp)``.

    ``stamps[id] == stamp`` marks ids already seen in the current bin; ``slots[id]`` is their output row.
    """
    n = 0
    bin_end = np.int64(-(1 << 62))
    for i in range(tok.size):
        ti = t[i]
        if ti >= bin_end:
            stamp += 1
            bin_end = origin + ((ti - origin) // width + 1) * width
        k = tok[i]
        if stamps[k] == stamp:
            out_cnt[slots[k]] += cnt[i]
        else:
            stamps[k] = stamp
            slots[k] = n
            out_tok[n] = k
            out_cnt[n] = cnt[i]
            out_t[n] = ti
            n += 1
    return n, stamp


class Coarsener:
    """Merges token runs into bins of ``width_us`` µs; ``unit_us`` is the Δt unit (µs per unit)."""

    def __init__(self, vocab_size: int, width_us: int, unit_us: float):
        if isinstance(width_us, bool) or not isinstance(width_us, int) or width_us < 1:
            raise ValueError(f"--coarse-us: the coarse bin width must be a positive int (µs); got {width_us!r}")
        self.width_us, self.unit_us = width_us, float(unit_us)
        self._stamps = np.zeros(vocab_size, np.int64)
        self._slots = np.zeros(vocab_size, np.int64)
        self._stamp = 0

    def merge(self, seq: TokenSequence, origin_us: int) -> TokenSequence:
        """``seq`` (time-sorted tokens of one recording) merged into coarse bins aligned to ``origin_us``.

        The first merged token is ``seq``'s first token, so its Δt (to the token before ``seq``) is kept.
        """
        n_in = seq.num_tokens
        if n_in == 0:
            return seq
        tok = np.empty(n_in, np.int32)
        cnt = np.empty(n_in, np.int32)
        t = np.empty(n_in, np.int64)
        n, self._stamp = _merge(seq.tokens, seq.counts, seq.t, np.int64(origin_us), np.int64(self.width_us),
                                self._stamps, self._slots, tok, cnt, t, self._stamp)
        tok, cnt, t = tok[:n], cnt[:n], t[:n]
        dt = np.empty(n, np.float32)
        dt[0] = seq.dt[0]
        if n > 1:
            dt[1:] = (np.diff(t) / self.unit_us).astype(np.float32)
        return TokenSequence(tok, cnt, dt, t)


__all__ = ["Coarsener"]
