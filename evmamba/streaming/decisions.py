"""Decisions from a stream of logits: an early decision once the classifier is steadily confident, and
the final decision when a recording ends.

**Early decision**: the first token after which the same class has been the top class with softmax
probability at least ``threshold`` for ``k_tokens`` consecutive evaluated tokens. It is made once per
recording; the loop goes on (the final decision may differ). ``threshold > 1`` disables it.

**Final decision**: the top class of the logits after the recording's last token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(M, C)`` logits, in float64 for stable probabilities."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


@dataclass
class Decision:
    """A decision: class index, its probability, and where in the recording it was made."""

    cls: int
    confidence: float
    token: int  # tokens consumed when it was made (1-based count)
    events: int  # events consumed
    t_us: int  # stream time of the deciding token (µs, relative to the recording's first event)

    def to_dict(self) -> dict:
        return {"class": self.cls, "confidence": self.confidence, "tokens": self.token, "events": self.events,
                "t_us": self.t_us}


class DecisionTracker:
    """Tracks one recording's run of confident predictions (see the module docstring)."""

    def __init__(self, threshold: float = 0.9, k_tokens: int = 50):
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold:
            raise ValueError(f"--early-threshold: must be a positive probability (> 1 disables); got {threshold!r}")
        if isinstance(k_tokens, bool) or not isinstance(k_tokens, int) or k_tokens < 1:
            raise ValueError(f"--early-tokens: must be a positive int; got {k_tokens!r}")
        self.threshold, self.k_tokens = float(threshold), k_tokens
        self.reset()

    def reset(self) -> None:
        self.early: Decision | None = None
        self._run_cls = -1
        self._run_len = 0

    def update(self, top: np.ndarray, conf: np.ndarray, tokens_before: np.ndarray, events_before: np.ndarray,
               t_rel: np.ndarray) -> Decision | None:
        """Feed the top class ``(M,)`` and its probability ``(M,)`` of evaluated tokens, with the tokens and
        events consumed after each and their stream times; return the early decision if it happens here."""
        if self.early is not None or top.size == 0:
            return None
        key = np.where(conf >= self.threshold, top.astype(np.int64), -1)  # -1: not confident
        m = key.size
        idx = np.arange(m)
        prev = np.concatenate([[self._run_cls], key[:-1]])
        starts = np.where(key != prev, idx, 0)
        run_start = np.maximum.accumulate(starts)  # index where each position's run began
        run_len = idx - run_start + 1
        continued = (run_start == 0) & (key[0] == self._run_cls) & (key >= 0)  # the carried run goes on
        run_len = run_len + np.where(continued, self._run_len, 0)
        run_len = np.where(key >= 0, run_len, 0)
        hits = np.flatnonzero(run_len >= self.k_tokens)
        if hits.size:
            i = int(hits[0])
            self.early = Decision(int(top[i]), float(conf[i]), int(tokens_before[i]), int(events_before[i]),
                                  int(t_rel[i]))
            return self.early
        self._run_cls, self._run_len = int(key[-1]), int(run_len[-1])
        return None

__all__ = ["Decision", "DecisionTracker", "softmax"]
