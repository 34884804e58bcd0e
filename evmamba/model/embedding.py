"""Token embeddings: a token id (its event count, and its local surface) -> a ``d_model`` vector.

Token ids follow DESIGN §5: ``id = ((y // k) * W' + x // k) * P + p`` on a ``(W', H', P)`` grid. Three kinds:

* ``table`` -- one learned row per id (``W' * H' * P`` rows);
* ``factorised`` -- an x row + a y row + a polarity row (``W' + H' + P`` rows), which keeps large sensors cheap
  and shares what neighbouring pixels have in common;
* ``surface`` -- spatial context: the token's local surface (:mod:`evmamba.pipeline.surfaces`, a patch of
  recent activity around it, computed from the token stream) through a small MLP whose weights are the same at
  every position (translation-equivariant), plus a learned row for the token's coarse position (cells of
  ``position_cell`` grid pixels) and one for its polarity. This kind needs the surfaces as an input.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..pipeline.surfaces import SurfaceConfig

EMBEDDINGS = ("table", "factorised", "surface")
#: Embeddings that take each token's local surface as an input.
SURFACE_EMBEDDINGS = ("surface",)


def position_grid(grid, position_cells_per_axis: int) -> tuple[int, int, int]:
    """``(cell, nx, ny)``: the coarse position cell size in grid pixels (at most ``position_cells_per_axis``
    cells along the longer axis) and the number of cells along x and y."""
    w, h = int(grid[0]), int(grid[1])
    cell = max(1, -(-max(w, h) // position_cells_per_axis))
    return cell, -(-w // cell), -(-h // cell)


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
    """``(tokens (B, L) int64, counts (B, L) float or None, surfaces (B, L, F) float or None) -> (B, L, d_model)``.

    Args:
        vocab_size: number of token ids.
        d_model: output size.
        kind: ``"table"``, ``"factorised"`` or ``"surface"`` (see the module docstring; the last two need ``grid``).
        grid: ``(W', H', P)`` with ``W' * H' * P == vocab_size``.
        count_feature: add ``log(count) * w`` with a learned vector ``w``: a token that merged many events
            differs from a single event (a count of 1, and padding, add nothing).
        surface: the :class:`~evmamba.pipeline.surfaces.SurfaceConfig` (or its mapping) of the surfaces
            (``"surface"`` only; default settings when None).
        surface_hidden: width of the surface MLP's hidden layer (0: a single linear map).
        position_cells: coarse position cells along the longer axis of the grid (``"surface"`` only).
    """

    def __init__(self, vocab_size: int, d_model: int, kind: str = "table", grid=None, count_feature: bool = True,
                 surface=None, surface_hidden: int = 64, position_cells: int = 8):
        super().__init__()
        if kind not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}; got {kind!r}")
        self.kind = kind
        self.vocab_size = vocab_size
        self.grid = None
        self.surface = None
        if kind == "table":
            self.table = nn.Embedding(vocab_size, d_model)
        else:
            if grid is None:
                raise ValueError(f"embedding={kind!r} needs grid=(W', H', P)")
            self.grid = check_grid(grid, vocab_size)
            w, h, p = self.grid
            self.p_table = nn.Embedding(p, d_model)
        if kind == "factorised":
            self.x_table = nn.Embedding(w, d_model)
            self.y_table = nn.Embedding(h, d_model)
        elif kind == "surface":
            self.surface = surface if isinstance(surface, SurfaceConfig) else SurfaceConfig.from_dict(
                surface, source="embedding: argument 'surface'")
            self.n_surface = self.surface.n_features(self.grid)
            self.position_cell, nx, ny = position_grid(self.grid, position_cells)
            self.position_nx = nx
            self.pos_table = nn.Embedding(nx * ny, d_model)
            if surface_hidden > 0:
                self.surface_mlp = nn.Sequential(nn.Linear(self.n_surface, surface_hidden), nn.SiLU(),
                                                 nn.Linear(surface_hidden, d_model))
            else:
                self.surface_mlp = nn.Linear(self.n_surface, d_model)
        self.count_proj = nn.Linear(1, d_model, bias=False) if count_feature else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Rows of unit scale: the first layer sees them through a norm, and later layers through the residual
        # stream, where they should not vanish against the layers' outputs.
        tables = {"table": lambda: [self.table], "factorised": lambda: [self.x_table, self.y_table, self.p_table],
                  "surface": lambda: [self.pos_table, self.p_table]}[self.kind]()
        for t in tables:
            nn.init.normal_(t.weight, std=1.0 / math.sqrt(len(tables)))
        if self.count_proj is not None:
            nn.init.normal_(self.count_proj.weight, std=0.5)

    @property
    def needs_surfaces(self) -> bool:
        return self.kind in SURFACE_EMBEDDINGS

    def position_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """Coarse position cell of each token (``"surface"`` only)."""
        w, _, p = self.grid
        xy = torch.div(tokens, p, rounding_mode="floor")
        cx = torch.div(xy % w, self.position_cell, rounding_mode="floor")
        cy = torch.div(torch.div(xy, w, rounding_mode="floor"), self.position_cell, rounding_mode="floor")
        return cy * self.position_nx + cx

    def forward(self, tokens: torch.Tensor, counts: torch.Tensor | None = None,
                surfaces: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "table":
            e = self.table(tokens)
        elif self.kind == "factorised":
            w, _, p = self.grid
            xy = torch.div(tokens, p, rounding_mode="floor")
            e = self.x_table(xy % w) + self.y_table(torch.div(xy, w, rounding_mode="floor")) + self.p_table(tokens % p)
        else:
            if surfaces is None or tuple(surfaces.shape) != (*tokens.shape, self.n_surface):
                got = None if surfaces is None else tuple(surfaces.shape)
                raise ValueError(f"embedding 'surface' needs surfaces of shape {(*tokens.shape, self.n_surface)} "
                                 f"(evmamba.pipeline.surfaces); got {got}")
            e = (self.surface_mlp(surfaces.to(self.pos_table.weight.dtype)) + self.pos_table(self.position_ids(tokens))
                 + self.p_table(tokens % self.grid[2]))
        if self.count_proj is not None and counts is not None:
            e = e + self.count_proj(torch.log(counts.to(e.dtype).clamp_min(1.0)).unsqueeze(-1))
        return e

    def extra_repr(self) -> str:
        extra = f", surface={self.surface}" if self.surface is not None else ""
        return (f"kind={self.kind!r}, vocab_size={self.vocab_size}, grid={self.grid}, "
                f"count_feature={self.count_proj is not None}{extra}")
