"""A second, learned level of spatial context per token: an event-by-event convolution over the latest
neighbours (the ``context`` stage of :class:`~evmamba.model.classifier.EventClassifier`).

The embedding describes each token from its own cell and, for the ``surface`` embedding, a fixed patch of
recent activity around it; the Mamba layers then relate distant pixels only through time. The context stage
adds a level of learned spatial features on top, computed from the embeddings of neighbouring tokens, the way a
second convolution layer reads the first one's feature maps:

1. ``h_i = act(W_in e_i)``: each token's embedding ``e_i`` (``d_model``) projected to ``C`` channels;
2. for each offset ``(dx, dy)`` of a ``(2r+1) x (2r+1)`` grid with dilation ``s`` (``dx, dy`` in
   ``{-r..r} * s``) and each polarity ``p'``, the *latest* token ``j <= i`` of the same stream (``j = i``
   included) whose id is the cell ``(x_i + dx, y_i + dy, p')``; its value is ``h_j exp(-(t_i - t_j) / tau)``,
   or 0 when there is none or the cell lies outside the grid;
3. the ``K P C`` values, concatenated, go through ``W_out`` (``K P C -> d_model``) and are added to ``e_i``.

The weights are the same at every position (translation-equivariant) and only the past is read, so the
token-by-token :meth:`ContextStage.step` computes exactly what :meth:`ContextStage.forward` does on whole
sequences (tested). On a 1-D sensor (``H' = 1``, spike channels) the grid is ``(2r+1) x 1`` (likewise for
``W' = 1``).

Times: ``t_i`` is the running sum of the model's ``dt`` along the stream (so the first token is at its own
``dt``, the binning's ``first_dt``), in the unit of ``dt`` (ms for the shipped configs), accumulated in
float64. ``tau`` is in the same unit.

Token ids follow DESIGN §5: ``id = (y * W' + x) * P + p`` on a ``(W', H', P)`` grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.checks import is_int, is_number, section_kwargs

ACTIVATIONS = ("silu", "none")
MAX_RADIUS = 8


def _mapping_hint(unknown: list[str]) -> str:
    """Advice for keys like ``'{radius:2}'``: a mapping written on the command line without spaces."""
    if any(":" in k for k in unknown):
        return (" (on the command line write a mapping as '{radius: 2, tau: 50}', with a space after each colon, "
                "or use dotted keys: model.context.radius=2)")
    return ""


@dataclass(frozen=True)
class ContextConfig:
    """The keys of a config's ``model.context`` mapping (validated on construction: ``ValueError`` naming the
    key and the value).

    * ``radius`` -- half-width of the neighbour grid, in offsets (0: the token's own cell only);
    * ``dilation`` -- grid pixels between two neighbouring offsets (1: adjacent cells);
    * ``channels`` -- ``C``, the width of each neighbour's projected embedding;
    * ``tau`` -- decay time constant of a neighbour's value, in the unit of the model's ``dt``;
    * ``activation`` -- ``"silu"`` after the input projection, or ``"none"``.
    """

    radius: int = 2
    dilation: int = 2
    channels: int = 16
    tau: float = 50.0
    activation: str = "silu"

    def __post_init__(self) -> None:
        source = "model.context"
        if not is_int(self.radius) or not 0 <= self.radius <= MAX_RADIUS:
            raise ValueError(f"{source}: key 'radius' must be an int in [0, {MAX_RADIUS}]; got {self.radius!r}")
        if not is_int(self.dilation) or self.dilation < 1:
            raise ValueError(f"{source}: key 'dilation' must be an int >= 1; got {self.dilation!r}")
        if not is_int(self.channels) or self.channels < 1:
            raise ValueError(f"{source}: key 'channels' must be an int >= 1; got {self.channels!r}")
        if not is_number(self.tau) or self.tau <= 0:
            raise ValueError(f"{source}: key 'tau' must be a positive number (the unit of dt); got {self.tau!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"{source}: key 'activation' must be one of {list(ACTIVATIONS)}; got {self.activation!r}")
        for key in ("radius", "dilation", "channels"):
            object.__setattr__(self, key, int(getattr(self, key)))
        object.__setattr__(self, "tau", float(self.tau))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str = "model.context") -> ContextConfig:
        """From a mapping (plain dict or OmegaConf node); missing keys take the defaults, unknown keys are
        errors naming them and the valid ones."""
        if d is None:
            return cls()
        kwargs = section_kwargs(cls, d, source, expected="null or a mapping", hint=_mapping_hint)
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise ValueError(str(exc).replace("model.context", source, 1)) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def offsets(self, grid) -> list[tuple[int, int]]:
        """The ``K`` offsets ``(dx, dy)`` in grid pixels, row by row (``dy`` outer); an axis of size 1 has
        only offset 0."""
        w, h = int(grid[0]), int(grid[1])
        rx = self.radius if w > 1 else 0
        ry = self.radius if h > 1 else 0
        s = self.dilation
        return [(dx * s, dy * s) for dy in range(-ry, ry + 1) for dx in range(-rx, rx + 1)]


def neighbour_ids(tokens: torch.Tensor, grid, dx: torch.Tensor, dy: torch.Tensor, dp: torch.Tensor) -> torch.Tensor:
    """The ids of the neighbour cells of each token: ``tokens`` ``(...)`` int64 -> ``(..., N)`` int64, where
    neighbour ``n`` is the cell ``(x + dx[n], y + dy[n])`` with polarity ``dp[n]``; -1 outside the grid."""
    w, h, p = (int(v) for v in grid)
    xy = torch.div(tokens, p, rounding_mode="floor")
    x = (xy % w).unsqueeze(-1) + dx
    y = torch.div(xy, w, rounding_mode="floor").unsqueeze(-1) + dy
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    return torch.where(inside, (y * w + x) * p + dp, torch.full_like(x, -1))


def sorted_keys(ids: torch.Tensor) -> torch.Tensor:
    """``ids`` ``(B, L)`` int64 (>= 0) -> the keys ``id * L + position`` of each row, sorted ``(B, L)``: a key
    orders tokens by id, then by position, so the latest token of an id up to a position is a binary search."""
    length = ids.shape[1]
    keys = ids * length + torch.arange(length, device=ids.device)
    return keys.sort(dim=1).values


def latest_match(keys: torch.Tensor, query_ids: torch.Tensor, query_pos: torch.Tensor):
    """For each query ``(id, position)``, the latest position ``j <= position`` holding ``id``.

    Args:
        keys: ``(B, L)`` from :func:`sorted_keys`.
        query_ids: ``(B, M)`` int64 ids (-1 or any id absent from the row: never found).
        query_pos: ``(B, M)`` int64 positions in ``[0, L)``.

    Returns:
        ``(j, found)``: ``(B, M)`` int64 positions (0 where not found) and bool.
    """
    length = keys.shape[1]
    if length == 0:
        return torch.zeros_like(query_ids), torch.zeros_like(query_ids, dtype=torch.bool)
    q = query_ids * length + query_pos
    idx = torch.searchsorted(keys, q, right=True) - 1
    hit = keys.gather(1, idx.clamp_min(0))
    found = (idx >= 0) & (torch.div(hit, length, rounding_mode="floor") == query_ids)
    j = torch.where(found, hit % length, torch.zeros_like(hit))
    return j, found


class ContextStage(nn.Module):
    """``e (B, L, d_model)`` -> ``e + W_out [h_j exp(-(t_i - t_j) / tau)]_neighbours`` (module docstring).

    Args:
        grid: the token grid ``(W', H', P)``.
        d_model: width of the embeddings.
        config: a :class:`ContextConfig` or a mapping of its keys (defaults when None).
    """

    def __init__(self, grid, d_model: int, config: ContextConfig | Mapping | None = None):
        super().__init__()
        self.config = config if isinstance(config, ContextConfig) else ContextConfig.from_dict(config)
        self.grid = tuple(int(v) for v in grid)
        w, h, p = self.grid
        self.vocab_size = w * h * p
        offsets = self.config.offsets(self.grid)
        # Neighbour n = offset n // P with polarity n % P.
        self.register_buffer("dx", torch.tensor([ox for ox, _ in offsets for _ in range(p)]), persistent=False)
        self.register_buffer("dy", torch.tensor([oy for _, oy in offsets for _ in range(p)]), persistent=False)
        self.register_buffer("dp", torch.arange(p).repeat(len(offsets)), persistent=False)
        self.n_neighbours = len(offsets) * p
        self.channels = self.config.channels
        self.tau = self.config.tau
        self.in_proj = nn.Linear(d_model, self.channels)
        self.out_proj = nn.Linear(self.n_neighbours * self.channels, d_model)

    def _project(self, e: torch.Tensor) -> torch.Tensor:
        h = self.in_proj(e)
        return F.silu(h) if self.config.activation == "silu" else h

    def _neighbours(self, tokens: torch.Tensor) -> torch.Tensor:
        return neighbour_ids(tokens, self.grid, self.dx, self.dy, self.dp)

    def _decay(self, t_now: torch.Tensor, t_then: torch.Tensor, keep: torch.Tensor, dtype) -> torch.Tensor:
        """``exp(-(t_now - t_then) / tau)`` where ``keep``, else 0 (times float64), as ``dtype``."""
        w = torch.exp((t_then - t_now) / self.tau)
        return torch.where(keep, w, torch.zeros_like(w)).to(dtype)

    def _output(self, e: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return e + self.out_proj(values.flatten(-2))

    @staticmethod
    def times(dt: torch.Tensor, valid: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """Each token's time ``(B, L)`` float64: ``start`` (B,) plus the running sum of ``dt`` over valid
        positions (padding adds nothing)."""
        dt = torch.where(valid, dt.double(), torch.zeros((), dtype=torch.float64, device=dt.device))
        t = torch.cumsum(dt, dim=1)
        return t if start is None else t + start[:, None]

    def forward(self, e: torch.Tensor, tokens: torch.Tensor, dt: torch.Tensor,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Whole right-padded sequences: ``e`` ``(B, L, d)``, ``tokens`` ``(B, L)`` int64, ``dt`` ``(B, L)``,
        ``lengths`` ``(B,)`` or None -> ``(B, L, d)``. Padded positions are never anyone's neighbour."""
        values, _ = self._gather(e, tokens, dt, lengths, None)
        return self._output(e, values)

    def _gather(self, e, tokens, dt, lengths, state):
        """The neighbour values ``(B, L, N, C)`` (from the sequence, and from ``state`` -- a stream's cache --
        for neighbours before it) and what a cache update needs."""
        tokens = tokens.long()
        batch, length = tokens.shape
        device = tokens.device
        pos = torch.arange(length, device=device)
        valid = (pos[None, :] < lengths[:, None]) if lengths is not None else torch.ones_like(tokens, dtype=torch.bool)
        t = self.times(dt, valid, None if state is None else state["now"])
        h = self._project(e)  # (B, L, C)
        # Indices carry no gradient; the gather of h does. Padded positions get id V: never a neighbour.
        with torch.no_grad():
            ids = torch.where(valid, tokens, torch.full_like(tokens, self.vocab_size))
            keys = sorted_keys(ids)
            qids = self._neighbours(tokens)  # (B, L, N)
            n = qids.shape[-1]
            j, found = latest_match(keys, qids.view(batch, length * n), pos.repeat_interleave(n).expand(batch, -1))
            t_then = t.gather(1, j)
        rows = (torch.arange(batch, device=device) * length)[:, None]
        # One (B, L, N, C) tensor: the gathered rows, decayed in place (index_select keeps no copy of them).
        flat = h.reshape(batch * length, self.channels)
        values = flat.index_select(0, (j + rows).view(-1)).view(batch, length, n, self.channels)
        t_now = t[:, :, None]
        if state is None:
            values.mul_(self._decay(t_now, t_then.view(batch, length, n), found.view(batch, length, n),
                                    values.dtype)[..., None])
            return values, None
        # Neighbours not seen in this chunk come from the cache (zero rows for ids never seen: value 0).
        inside = qids >= 0
        cache_ids = qids.clamp_min(0).view(batch, length * n)
        from_cache = state["h"].gather(1, cache_ids[:, :, None].expand(-1, -1, self.channels)).to(values.dtype)
        found3 = found.view(batch, length, n)
        # In place, so that two (B, L, N, C) tensors at most exist at once.
        values.mul_(found3[..., None]).add_(from_cache.view(batch, length, n, self.channels).mul_(~found3[..., None]))
        t_then = torch.where(found, t_then, state["t"].gather(1, cache_ids)).view(batch, length, n)
        values.mul_(self._decay(t_now, t_then, inside, values.dtype)[..., None])
        return values, (ids, keys, h, t, valid)

    # ------------------------------------------------------------------------------------------ streams
    def allocate_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """A zeroed per-stream state: ``h`` ``(B, V + 1, C)`` the latest projected embedding of every id (slot
        ``V`` is a bin for the writes of padded positions), ``t`` ``(B, V + 1)`` float64 its time, ``now``
        ``(B,)`` float64 the stream's running time. An id never seen has ``h = 0``, so contributes 0."""
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        v = self.vocab_size + 1
        return {"h": torch.zeros(batch_size, v, self.channels, device=device, dtype=dtype),
                "t": torch.zeros(batch_size, v, device=device, dtype=torch.float64),
                "now": torch.zeros(batch_size, device=device, dtype=torch.float64)}

    @staticmethod
    def reset_state(state: dict) -> None:
        for v in state.values():
            v.zero_()

    def step(self, e: torch.Tensor, tokens: torch.Tensor, dt: torch.Tensor, state: dict) -> torch.Tensor:
        """One token per stream: ``e`` ``(B, d)``, ``tokens`` ``(B,)`` int64, ``dt`` ``(B,)`` -> ``(B, d)``;
        ``state`` updated in place with fixed-shape gathers and scatters (no host synchronisation: a CUDA
        graph can capture it)."""
        tokens = tokens.long()
        h = self._project(e)  # (B, C)
        now = state["now"].add_(dt.to(torch.float64))
        state["h"].scatter_(1, tokens[:, None, None].expand(-1, 1, self.channels), h[:, None].to(state["h"].dtype))
        state["t"].scatter_(1, tokens[:, None], now[:, None])
        qids = self._neighbours(tokens)  # (B, N)
        cache_ids = qids.clamp_min(0)
        values = state["h"].gather(1, cache_ids[:, :, None].expand(-1, -1, self.channels)).to(h.dtype)
        decay = self._decay(now[:, None], state["t"].gather(1, cache_ids), qids >= 0, h.dtype)
        return self._output(e, values * decay[..., None])

    def forward_chunk(self, e: torch.Tensor, tokens: torch.Tensor, dt: torch.Tensor, lengths: torch.Tensor,
                      state: dict) -> torch.Tensor:
        """The next ``lengths[b]`` tokens of each stream (a right-padded chunk ``(B, T)``) -> ``(B, T, d)``, as
        ``T`` calls of :meth:`step` would give; ``state`` updated in place (rows of length 0 unchanged)."""
        values, (ids, keys, h, t, valid) = self._gather(e, tokens, dt, lengths, state)
        out = self._output(e, values)
        del values
        batch, length = tokens.shape
        if length:
            # Each valid token writes the value of the latest token of its id in the chunk (duplicates write
            # the same value, so the scatter is deterministic); padded positions write to the bin, slot V.
            last = torch.full_like(ids, length - 1)
            j, _ = latest_match(keys, ids, last)
            target = ids  # V at padded positions
            rows = (torch.arange(batch, device=tokens.device) * length)[:, None]
            flat = h.reshape(batch * length, self.channels)
            h_last = flat.index_select(0, (j + rows).view(-1)).view(batch, length, self.channels)
            state["h"].scatter_(1, target[:, :, None].expand(-1, -1, self.channels), h_last.to(state["h"].dtype))
            state["t"].scatter_(1, target, t.gather(1, j))
            state["now"].copy_(torch.where(lengths > 0, t.gather(1, (lengths - 1).clamp_min(0)[:, None])[:, 0],
                                           state["now"]))
        return out

    def extra_repr(self) -> str:
        return f"grid={self.grid}, neighbours={self.n_neighbours}, {self.config}"


def saved_floats_per_token(stage: ContextStage) -> float:
    """Floats per token the stage keeps for a backward pass (memory estimates): the gathered neighbour values
    (``N C``), their indices and decays (``3 N``: int64 counts twice), ``h`` and its pre-activation (``2 C``)
    and the times (2: float64)."""
    n, c = stage.n_neighbours, stage.channels
    return n * c + 3 * n + 2 * c + 2


__all__ = ["ACTIVATIONS", "ContextConfig", "ContextStage", "latest_match", "neighbour_ids", "saved_floats_per_token",
           "sorted_keys"]
