"""Token embeddings: a token id (and its event count) -> a ``d_model`` vector.

Token ids follow DESIGN §5: ``id = ((y // k) * W' + x // k) * P + p`` on a ``(W', H', P)`` grid. A full table
has one row per id (``W' * H' * P`` rows); the factorised embedding sums an x row, a y row and a polarity row
(``W' + H' + P`` rows), which keeps large sensors cheap and shares what neighbouring pixels have in common.
"""

from __future__ import annotations

import math
import operator
from typing import Sequence

import torch
import torch.nn as nn

EMBEDDINGS = ("table", "factorised")


def check_grid(grid, vocab_size: int, source: str = "grid") -> tuple[int, int, int]:
    """``grid`` as ``(W', H', P)`` positive ints whose product is ``vocab_size``; ``ValueError`` otherwise."""
    if not isinstance(grid, Sequence) or isinstance(grid, (str, bytes)) or len(grid) != 3:
        raise ValueError(f"{source} must be a (W', H', P) triple of positive ints; got {grid!r}")
    out = []
    for name, v in zip(("W'", "H'", "P"), grid):
        try:
            v = operator.index(v)  # ints and numpy integers; floats and strings fail here
        except TypeError:
            raise ValueError(f"{source}: {name} must be a positive int; got {v!r}") from None
        if v < 1:
            raise ValueError(f"{source}: {name} must be a positive int; got {v}")
        out.append(v)
    if math.prod(out) != vocab_size:
        raise ValueError(f"{source} {tuple(out)} has {math.prod(out)} cells but vocab_size is {vocab_size}")
    return out[0], out[1], out[2]


class TokenEmbedding(nn.Module):
    """``(tokens (B, L) int64, counts (B, L) float or None) -> (B, L, d_model)``.

    Args:
        vocab_size: number of token ids.
        d_model: output size.
        kind: ``"table"`` (one row per id) or ``"factorised"`` (x + y + polarity rows; needs ``grid``).
        grid: ``(W', H', P)`` with ``W' * H' * P == vocab_size`` (for ``"factorised"``).
        count_feature: add ``log(count) * w`` with a learned vector ``w``: a token that merged many events
            differs from a single event (a count of 1, and padding, add nothing).
    """

    def __init__(self, vocab_size: int, d_model: int, kind: str = "table", grid=None, count_feature: bool = True):
        super().__init__()
        if kind not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}; got {kind!r}")
        self.kind = kind
        self.vocab_size = vocab_size
        if kind == "table":
            self.table = nn.Embedding(vocab_size, d_model)
            self.grid = None
        else:
            if grid is None:
                raise ValueError("embedding='factorised' needs grid=(W', H', P)")
            self.grid = check_grid(grid, vocab_size)
            w, h, p = self.grid
            self.x_table = nn.Embedding(w, d_model)
            self.y_table = nn.Embedding(h, d_model)
            self.p_table = nn.Embedding(p, d_model)
        self.count_proj = nn.Linear(1, d_model, bias=False) if count_feature else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Rows of unit scale: the first layer sees them through a norm, and later layers through the residual
        # stream, where they should not vanish against the layers' outputs.
        tables = [self.table] if self.kind == "table" else [self.x_table, self.y_table, self.p_table]
        for t in tables:
            nn.init.normal_(t.weight, std=1.0 / math.sqrt(len(tables)))
        if self.count_proj is not None:
            nn.init.normal_(self.count_proj.weight, std=0.5)

    def forward(self, tokens: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "table":
            e = self.table(tokens)
        else:
            w, _, p = self.grid
            xy = torch.div(tokens, p, rounding_mode="floor")
            e = self.x_table(xy % w) + self.y_table(torch.div(xy, w, rounding_mode="floor")) + self.p_table(tokens % p)
        if self.count_proj is not None and counts is not None:
            e = e + self.count_proj(torch.log(counts.to(e.dtype).clamp_min(1.0)).unsqueeze(-1))
        return e

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, vocab_size={self.vocab_size}, grid={self.grid}, count_feature={self.count_proj is not None}"
