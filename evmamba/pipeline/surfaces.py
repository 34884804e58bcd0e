"""Spatial context per token: local time (or count) surfaces, computed event by event.

A token id says *where* an event was, but nothing about its neighbourhood, so a model of token ids has to
learn from scratch that neighbouring pixels are related. A *local surface* gives every token a description of
what happened around it just before it: for each cell of a ``(2r+1) x (2r+1)`` patch centred on the token's
cell and each polarity, ``exp(-(t - t_last) / tau)`` where ``t_last`` is the time of the latest token of that
cell (``kind="time"``, a time surface as in HOTS), or ``log1p`` of the exponentially decayed count of its
events (``kind="count"``). Cells never touched, or outside the sensor, give 0. Several time constants and
several cell sizes (``scales``: 1 = the token grid, 4 = cells of 4 x 4 grid pixels: a coarser, wider view)
are concatenated. A learned projection shared by every position then turns the patch into an embedding
(:class:`~evmamba.model.embedding.TokenEmbedding`), which is translation-equivariant by construction.

Surfaces are computed from the binned tokens (ids and times), after augmentation, so the same function serves
training, evaluation and the stream loop: :func:`token_surfaces` runs over a whole sequence and
:class:`SurfaceTracker` over consecutive chunks of a stream, carrying the state; both give identical values
(tested). On 1-D sensors (spike channels: ``H' = 1``) the patch is ``(2r+1) x 1``.

Shapes and units: token times are int64 µs; ``tau_us`` in µs; surfaces are ``(L, F)`` float32 with
``F = len(scales) * len(tau_us) * (2 ry + 1) * (2 rx + 1) * P`` (:meth:`SurfaceConfig.n_features`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from ..core.checks import is_number, section_kwargs

KINDS = ("time", "count")


def _positive_number(value: Any) -> bool:
    return is_number(value) and value > 0


@dataclass(frozen=True)
class SurfaceConfig:
    """How the surfaces are made (validated on construction; ``ValueError`` naming the key and value).

    * ``radius`` -- patch half-width in cells (0: the token's own cell only);
    * ``tau_us`` -- one or more decay time constants in µs;
    * ``scales`` -- one or more cell sizes in token-grid pixels (1 = the grid itself);
    * ``kind`` -- ``"time"`` or ``"count"`` (see the module docstring).
    """

    radius: int = 2
    tau_us: tuple[float, ...] = (20000.0,)
    scales: tuple[int, ...] = (1,)
    kind: str = "time"

    def __post_init__(self) -> None:
        source = "surface config"
        r = self.radius
        if isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, np.integer)) or not 0 <= r <= 16:
            raise ValueError(f"{source}: key 'radius' must be an int in [0, 16]; got {r!r}")
        taus = self.tau_us if isinstance(self.tau_us, Sequence) and not isinstance(self.tau_us, str) else [self.tau_us]
        if not taus or not all(_positive_number(v) for v in taus):
            raise ValueError(f"{source}: key 'tau_us' must be a positive number or a list of them; got {self.tau_us!r}")
        scales = (
            self.scales if isinstance(self.scales, Sequence) and not isinstance(self.scales, str) else [self.scales]
        )
        if not scales or not all(not isinstance(s, (bool, np.bool_)) and isinstance(s, (int, np.integer)) and s >= 1
                                 for s in scales):
            raise ValueError(f"{source}: key 'scales' must be a positive int or a list of them; got {self.scales!r}")
        if self.kind not in KINDS:
            raise ValueError(f"{source}: key 'kind' must be one of {list(KINDS)}; got {self.kind!r}")
        object.__setattr__(self, "radius", int(r))
        object.__setattr__(self, "tau_us", tuple(float(v) for v in taus))
        object.__setattr__(self, "scales", tuple(int(s) for s in scales))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str = "surface config") -> SurfaceConfig:
        """From a mapping (plain dict or OmegaConf); missing keys take the defaults, unknown keys are errors."""
        if d is None:
            return cls()
        kwargs = section_kwargs(cls, d, source)
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise ValueError(str(exc).replace("surface config", source, 1)) from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tau_us"], d["scales"] = list(self.tau_us), list(self.scales)
        return d

    def radii(self, grid) -> tuple[int, int]:
        """``(rx, ry)``: the radius, or 0 along an axis of size 1 (1-D sensors)."""
        w, h, _ = (int(v) for v in grid)
        return (self.radius if w > 1 else 0), (self.radius if h > 1 else 0)

    def n_features(self, grid) -> int:
        """``F``, the surface size per token on a ``(W', H', P)`` token grid."""
        rx, ry = self.radii(grid)
        return len(self.scales) * len(self.tau_us) * (2 * ry + 1) * (2 * rx + 1) * int(grid[2])


class SurfaceTracker:
    """The surfaces of one stream, chunk by chunk: :meth:`push` the tokens as they come; :meth:`reset` for a
    new recording. ``grid`` is the token grid ``(W', H', P)`` of the binning."""

    def __init__(self, grid, cfg: SurfaceConfig) -> None:
        from ._surface_kernels import KIND_CODES, NEVER

        if not isinstance(cfg, SurfaceConfig):
            raise TypeError(f"SurfaceTracker: cfg must be a SurfaceConfig; got {type(cfg).__name__}")
        if len(grid) != 3 or any(int(v) < 1 for v in grid):
            raise ValueError(f"SurfaceTracker: grid must be (W', H', P) positive ints; got {grid!r}")
        self.grid = tuple(int(v) for v in grid)
        self.cfg = cfg
        self.n_features = cfg.n_features(self.grid)
        w, h, p = self.grid
        self._rx, self._ry = cfg.radii(self.grid)
        self._scales = np.asarray(cfg.scales, np.int64)
        self._inv_tau = 1.0 / np.asarray(cfg.tau_us, np.float64)
        self._kind = KIND_CODES[cfg.kind]
        self._never = NEVER
        n_s = len(cfg.scales)
        self._last = np.full((n_s, h, w, p), NEVER, np.int64)  # scale 1 is the largest map; coarser use a corner
        self._acc = np.zeros((n_s, len(cfg.tau_us), h, w, p) if self._kind == 1 else (1, 1, 1, 1, 1), np.float64)

    def reset(self) -> None:
        self._last.fill(self._never)
        self._acc.fill(0.0)

    def push(self, tokens, t_us, counts=None) -> np.ndarray:
        """Surfaces ``(n, F)`` float32 of the next ``n`` tokens of the stream (ids, times in µs, counts)."""
        from ._surface_kernels import surfaces_into

        tokens = np.ascontiguousarray(tokens)
        t_us = np.ascontiguousarray(t_us, dtype=np.int64)
        n = tokens.shape[0]
        if tokens.ndim != 1 or t_us.shape != (n,):
            raise ValueError(
                f"SurfaceTracker.push: tokens and t_us must be 1-D of one length; got {tokens.shape}, {t_us.shape}"
            )
        counts = np.ones(n, np.int32) if counts is None else np.ascontiguousarray(counts)
        if counts.shape != (n,):
            raise ValueError(f"SurfaceTracker.push: counts must have shape ({n},); got {counts.shape}")
        out = np.empty((n, self.n_features), np.float32)
        if n:
            w, h, p = self.grid
            if int(tokens.min()) < 0 or int(tokens.max()) >= w * h * p:
                raise ValueError(
                    f"SurfaceTracker.push: token ids must lie in [0, {w * h * p}) for the grid {self.grid}"
                )
            surfaces_into(tokens, t_us, counts, w, h, p, self._rx, self._ry, self._scales, self._inv_tau,
                          self._kind, self._last, self._acc, out)
        return out


class SurfacedSequence(NamedTuple):
    """A :class:`~evmamba.pipeline.binning.TokenSequence`'s four arrays plus ``surfaces`` ``(L, F)`` float32."""

    tokens: np.ndarray
    counts: np.ndarray
    dt: np.ndarray
    t: np.ndarray
    surfaces: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


def token_surfaces(seq, grid, cfg: SurfaceConfig) -> np.ndarray:
    """Surfaces ``(L, F)`` float32 of a whole token sequence (a :class:`~evmamba.pipeline.binning.TokenSequence`
    or anything with ``tokens``, ``t`` and ``counts``), starting from an empty state."""
    return SurfaceTracker(grid, cfg).push(seq.tokens, seq.t, seq.counts)


__all__ = ["KINDS", "SurfaceConfig", "SurfaceTracker", "SurfacedSequence", "token_surfaces"]
