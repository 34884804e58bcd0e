"""Events -> tokens: spatial downsampling, token ids, time-bin merging and Δt (DESIGN §2 and §5).

What :func:`bin_events` does to a recording, in this order:

1. **crop by time** -- keep events with ``t0 + t_start_us <= t < t0 + t_stop_us``, where ``t0`` is the time
   of the recording's first event (so the window is relative to the recording, whatever its clock);
2. **denoise** -- drop isolated events, exactly as tonic 1.7's ``Denoise(filter_time=denoise_us)``
   (see :func:`evmamba.pipeline.filters.denoise`);
3. **refractory** -- drop an event whose pixel emitted a kept event less than ``refractory_us`` earlier;
4. **crop by count** -- keep the first ``max_events`` events that are left;
5. **tokens** -- ``id = ((y // k) * W' + x // k) * P + p`` with ``W' = ceil(W / k)``, ``P`` the sensor's
   polarities (or 1 and ``p = 0`` when polarity is dropped): every (x', y', p) has its own id below
   :func:`vocab_size`;
6. **time bins** (``bin_us > 0``) -- bins ``[t0 + j * bin_us, t0 + (j + 1) * bin_us)`` are aligned to the
   recording's first event; inside a bin, repeated ids merge into one token whose ``count`` is the number
   of events and whose time ``t`` is the time of its first event; tokens keep the order of first
   occurrence. With ``bin_us = 0`` every event is a token with count 1;
7. **Δt** -- ``dt[i] = float32((t[i] - t[i-1]) / unit)`` with ``unit`` = 1, 1000 or 10**6 µs for
   ``time_unit`` "us", "ms" or "s"; ``dt[0] = first_dt``.

:class:`StreamingBinner` does the same to a recording delivered in chunks and carries the state (crop
origin, filter memories, the open bin) between them: the concatenation of its outputs equals
:func:`bin_events` on the whole recording, token for token. A time bin's tokens are emitted once the bin
has closed -- when an event or :meth:`StreamingBinner.advance` reaches the bin's end -- so the online delay
is at most one bin width.

An empty recording (or one whose events are all cropped or filtered away) gives an empty
:class:`TokenSequence`; whether that is acceptable is for the dataset layer to decide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from ..core.checks import validated_from_mapping
from ..core.events import EVENT_DTYPE, SensorSize, check_sensor_size
from .events import validate_events

TIME_UNITS_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}

# One call handles at most this many events: token slots are stored as int32 (see merge_tokens).
_MAX_EVENTS_PER_CALL = (1 << 31) - (1 << 24)


class TokenSequence(NamedTuple):
    """The tokens of one stream; all four arrays have the same length ``L``.

    * ``tokens`` -- ``(L,)`` int32 token ids in ``[0, vocab_size)``;
    * ``counts`` -- ``(L,)`` int32 number of events merged into each token (>= 1);
    * ``dt`` -- ``(L,)`` float32 gap to the previous token of the stream in the configured unit
      (the first token of a stream has ``first_dt``);
    * ``t`` -- ``(L,)`` int64 time in µs of each token's first event.
    """

    tokens: np.ndarray
    counts: np.ndarray
    dt: np.ndarray
    t: np.ndarray

    @property
    def num_tokens(self) -> int:
        """``L`` (``len()`` of a TokenSequence is 4, the number of fields, as for any named tuple)."""
        return int(self.tokens.shape[0])

    @staticmethod
    def empty() -> TokenSequence:
        """A sequence with no tokens (arrays of length 0 with the usual dtypes)."""
        return TokenSequence(
            np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.float32), np.empty(0, np.int64)
        )

    @staticmethod
    def concatenate(parts) -> TokenSequence:
        """Join sequences end to end (e.g. the outputs of a :class:`StreamingBinner`)."""
        parts = list(parts)
        if not parts:
            return TokenSequence.empty()
        return TokenSequence(*(np.concatenate([getattr(p, f) for p in parts]) for f in TokenSequence._fields))


def _int_option(name: str, value: Any, minimum: int, source: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        alternative = " (or null)" if allow_none else ""
        raise ValueError(f"{source}: key '{name}' must be an integer >= {minimum}{alternative}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{source}: key '{name}' must be >= {minimum}; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class BinningConfig:
    """How events become tokens; see the module docstring for the order of the steps.

    * ``downsample`` -- spatial factor k >= 1: x // k, y // k (W' = ceil(W / k), H' = ceil(H / k));
    * ``polarity`` -- keep the sensor's polarities (P = 1 or 2) or merge them (P = 1);
    * ``bin_us`` -- time-bin width in µs; 0 = one token per event (no merging);
    * ``time_unit`` -- unit of ``dt``: "us", "ms" or "s";
    * ``first_dt`` -- ``dt`` of the first token of a stream;
    * ``denoise_us`` -- isolated-event filter window in µs (0 = off), as tonic's ``Denoise``;
    * ``refractory_us`` -- per-pixel dead time in µs after a kept event (0 = off);
    * ``t_start_us`` / ``t_stop_us`` -- keep ``t0 + t_start_us <= t < t0 + t_stop_us`` with ``t0`` the
      recording's first event (None = no bound);
    * ``max_events`` -- keep the first N events left after the time crop and the filters (None = all).

    Constructing one validates every field (``ValueError`` naming the key and the value).
    """

    downsample: int = 1
    polarity: bool = True
    bin_us: int = 0
    time_unit: str = "ms"
    first_dt: float = 0.0
    denoise_us: int = 0
    refractory_us: int = 0
    t_start_us: int | None = None
    t_stop_us: int | None = None
    max_events: int | None = None

    def __post_init__(self) -> None:
        self._validate("BinningConfig")

    def _validate(self, source: str) -> None:
        _int_option("downsample", self.downsample, 1, source)
        if not isinstance(self.polarity, (bool, np.bool_)):
            raise ValueError(f"{source}: key 'polarity' must be true or false; got {self.polarity!r}")
        _int_option("bin_us", self.bin_us, 0, source)
        if self.time_unit not in TIME_UNITS_US:
            raise ValueError(
                f"{source}: key 'time_unit' must be one of {sorted(TIME_UNITS_US)}; got {self.time_unit!r}"
            )
        fd = self.first_dt
        if (
            isinstance(fd, (bool, np.bool_))
            or not isinstance(fd, (int, float, np.integer, np.floating))
            or not math.isfinite(fd)
        ):
            raise ValueError(f"{source}: key 'first_dt' must be a finite number; got {fd!r}")
        _int_option("denoise_us", self.denoise_us, 0, source)
        _int_option("refractory_us", self.refractory_us, 0, source)
        start = _int_option("t_start_us", self.t_start_us, 0, source, allow_none=True)
        stop = _int_option("t_stop_us", self.t_stop_us, 1, source, allow_none=True)
        if start is not None and stop is not None and stop <= start:
            raise ValueError(f"{source}: key 't_stop_us' ({stop}) must be greater than 't_start_us' ({start})")
        _int_option("max_events", self.max_events, 1, source, allow_none=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "binning config") -> BinningConfig:
        """Build from a mapping (a plain dict or an OmegaConf ``DictConfig``); unknown keys are rejected."""
        return validated_from_mapping(cls, d, source, "binning options")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (for configs, HDF5 attributes and cache keys)."""
        return asdict(self)


def token_grid(sensor_size, cfg: BinningConfig) -> tuple[int, int, int]:
    """``(W', H', P)`` of the token grid: ``W' = ceil(W / k)``, ``H' = ceil(H / k)``, ``P`` the sensor's
    polarities, or 1 when polarity is dropped."""
    w, h, npol = sensor_size
    k = cfg.downsample
    return -(-w // k), -(-h // k), (npol if cfg.polarity else 1)


def _check_cfg(cfg, source: str) -> BinningConfig:
    if isinstance(cfg, BinningConfig):
        return cfg
    if isinstance(cfg, Mapping) or hasattr(cfg, "_metadata"):
        return BinningConfig.from_dict(cfg, f"{source}: cfg")
    raise TypeError(f"{source}: cfg must be a BinningConfig or a mapping; got {type(cfg).__name__}")


def vocab_size(sensor_size, cfg: BinningConfig) -> int:
    """Number of distinct token ids, ``W' * H' * P`` (ids are ``0 .. vocab_size - 1``)."""
    sensor_size = check_sensor_size(sensor_size)
    wk, hk, pk = token_grid(sensor_size, _check_cfg(cfg, "vocab_size"))
    return wk * hk * pk


def token_id(x, y, p, sensor_size, cfg: BinningConfig):
    """The token id of DESIGN §5, ``((y // k) * W' + x // k) * P + p`` (``p`` counts as 0 when polarity is
    dropped). Scalars give an ``int``; arrays give an int64 array of the broadcast shape.

    Raises ``ValueError`` for coordinates or polarities outside ``sensor_size``.
    """
    sensor_size = check_sensor_size(sensor_size)
    cfg = _check_cfg(cfg, "token_id")
    w, h, npol = sensor_size
    wk, _, pk = token_grid(sensor_size, cfg)
    scalar = all(np.ndim(v) == 0 for v in (x, y, p))
    xa, ya, pa = (np.asarray(v, dtype=np.int64) for v in (x, y, p))
    for name, arr, limit in (("x", xa, w), ("y", ya, h), ("p", pa, npol)):
        if arr.size and (arr.min() < 0 or arr.max() >= limit):
            bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
            raise ValueError(
                f"token_id: argument '{name}' has value {bad}, outside 0..{limit - 1} for sensor {sensor_size}"
            )
    k = cfg.downsample
    pa = pa if cfg.polarity else np.zeros_like(pa)
    ids = ((ya // k) * wk + xa // k) * pk + pa
    return int(ids) if scalar else ids


def _token_tables(sensor_size: SensorSize, cfg: BinningConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables with ``id = ytab[y] + xtab[x] + ptab[p]`` (uint32; sizes W, H and P of the sensor)."""
    w, h, npol = sensor_size
    wk, _, pk = token_grid(sensor_size, cfg)
    k = cfg.downsample
    xtab = (np.arange(w, dtype=np.int64) // k * pk).astype(np.uint32)
    ytab = (np.arange(h, dtype=np.int64) // k * (wk * pk)).astype(np.uint32)
    ptab = np.arange(npol, dtype=np.uint32) if cfg.polarity else np.zeros(npol, dtype=np.uint32)
    return xtab, ytab, ptab


class StreamingBinner:
    """The binner of :func:`bin_events`, fed chunk by chunk (a live camera, a file read in pieces).

    ``push(chunk)`` returns the tokens that are final after that chunk; ``flush()`` ends the stream and
    returns the rest; ``advance(t_us)`` tells the binner that no event earlier than ``t_us`` will come,
    which closes the bins that end by then. The concatenation of all returned sequences equals
    ``bin_events(whole_recording)``. ``reset()`` starts a new recording (the crop origin, the filter
    memories and the bins start over).

    Chunks are validated like :func:`bin_events` input, and each chunk must not start before the previous
    chunk's last event (or an ``advance`` time): ``ValueError`` otherwise. A rejected chunk leaves the
    binner as it was.
    """

    def __init__(self, sensor_size, cfg: BinningConfig, source: str = "stream") -> None:
        self.source = source
        self.sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
        self.cfg = _check_cfg(cfg, source)
        self._xtab, self._ytab, self._ptab = _token_tables(self.sensor_size, self.cfg)
        self._vocab = vocab_size(self.sensor_size, self.cfg)
        self._unit_us = TIME_UNITS_US[self.cfg.time_unit]
        self._first_dt = np.float32(self.cfg.first_dt)
        w, h, _ = self.sensor_size
        self._denoise_mem = np.zeros(w * h, np.int64) if self.cfg.denoise_us > 0 else np.zeros(1, np.int64)
        self._refr_mem = np.empty(w * h, np.int64) if self.cfg.refractory_us > 0 else np.zeros(1, np.int64)
        merging = self.cfg.bin_us > 0
        self._stamps = np.zeros(self._vocab if merging else 1, np.int32)  # see merge_tokens
        self._counts = np.zeros(self._vocab if merging else 1, np.int32)
        self.reset()

    # -- public API -----------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the current recording; the next event pushed starts a new one."""
        from ._binning_kernels import NEVER_FIRED

        self._unchecked = None  # the events of an offline call whose validation the token loop does
        self._t0: int | None = None  # first event of the recording: origin of the crop and of the bins
        self._now = 0  # no event earlier than this may come (last event time or advance time), µs
        self._passed = 0  # events that reached the tokenizer (for max_events)
        self._denoise_mem.fill(0)
        self._refr_mem.fill(NEVER_FIRED)
        self._stamps.fill(0)
        self._state = np.zeros(4, np.int64)  # [has_prev, t_prev, bin_end, bin_stamp]
        self._pending = TokenSequence.empty()  # tokens of the open bin

    def push(self, events: np.ndarray) -> TokenSequence:
        """Bin one chunk; return the tokens that are final once it is in. An empty chunk returns nothing."""
        validate_events(events, self.sensor_size, self.source, t_min=self._now)
        return self._process(events, final=False)

    def advance(self, t_us: int) -> TokenSequence:
        """No event before ``t_us`` (µs) will come: return the tokens of bins that end at or before it."""
        if isinstance(t_us, (bool, np.bool_)) or not isinstance(t_us, (int, np.integer)):
            raise TypeError(f"{self.source}: advance(t_us) needs an integer time in µs; got {t_us!r}")
        if t_us < self._now:
            raise ValueError(
                f"{self.source}: advance(t_us={int(t_us)}) goes back before the stream's time {self._now} µs"
            )
        self._now = int(t_us)
        return self._close_bins_until(self._now)

    def flush(self) -> TokenSequence:
        """End of the recording: return the tokens still pending (the open bin)."""
        out, self._pending = self._pending, TokenSequence.empty()
        return out

    @property
    def pending(self) -> int:
        """Number of tokens waiting for their bin to close."""
        return self._pending.num_tokens

    # -- internals ------------------------------------------------------------------------------------

    def _close_bins_until(self, now: int) -> TokenSequence:
        if self._pending.num_tokens and self.cfg.bin_us > 0 and now >= self._state[2]:
            return self.flush()
        return TokenSequence.empty()

    def _select(self, events: np.ndarray) -> np.ndarray:
        """Apply the crops and filters to a validated chunk; returns the events that become tokens."""
        from . import _binning_kernels as K

        cfg = self.cfg
        if self._t0 is None:
            self._t0 = int(events["t"][0])
            # Bins are aligned to the recording's first event; bin_end = t0 means "the bin before ended".
            self._state[2] = self._t0
        if cfg.t_start_us is not None:
            events = events[K.first_at_or_after(events, self._t0 + cfg.t_start_us):]
        if cfg.t_stop_us is not None:
            events = events[: K.first_at_or_after(events, self._t0 + cfg.t_stop_us)]
        if events.size and (cfg.denoise_us > 0 or cfg.refractory_us > 0):
            kept = np.empty(events.size, EVENT_DTYPE)
            w, h, _ = self.sensor_size
            n = K.filter_events(
                events, w, h, cfg.denoise_us, cfg.refractory_us, self._denoise_mem, self._refr_mem, kept
            )
            events = kept[:n]
        if cfg.max_events is not None:
            events = events[: max(0, cfg.max_events - self._passed)]
        self._passed += events.size
        return events

    def _raise_if(self, bad: int) -> None:
        """The token loop saw an invalid event: only possible on the offline path that skips validation
        (see :func:`bin_events`), whose caller discards this binner. Report it as validation would."""
        if bad:
            if self._unchecked is not None:
                validate_events(self._unchecked, self.sensor_size, self.source)
            raise AssertionError(f"{self.source}: the token loop flagged an event that validation accepts")

    def _process(self, events: np.ndarray, final: bool) -> TokenSequence:
        from . import _binning_kernels as K

        if events.size == 0:
            return self.flush() if final else TokenSequence.empty()
        if events.size > _MAX_EVENTS_PER_CALL:
            raise ValueError(f"{self.source}: a chunk holds at most {_MAX_EVENTS_PER_CALL} events; got {events.size}")
        last_t = int(events["t"][-1])
        events = self._select(events)
        self._now = last_t
        if self.cfg.bin_us == 0:
            n = events.size
            out = TokenSequence(
                np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.float32), np.empty(n, np.int64)
            )
            bad = K.emit_tokens(
                events, self._xtab, self._ytab, self._ptab, self._unit_us, self._first_dt, self._state, *out
            )
            self._raise_if(bad)
            return out
        # The open bin's tokens go first in the buffers; one spare slot for the kernel's branch-free writes.
        m = self._pending.num_tokens
        size = m + events.size + 1
        buf = TokenSequence(
            np.empty(size, np.int32), np.empty(size, np.int32), np.empty(size, np.float32), np.empty(size, np.int64)
        )
        if m:
            for dst, src in zip(buf, self._pending):
                dst[:m] = src
        n, open_start = K.merge_tokens(
            events, self._xtab, self._ytab, self._ptab, self.cfg.bin_us, self._t0, self._unit_us,
            self._first_dt, self._stamps, self._counts, self._state, *buf, m,
        )
        if final or last_t >= self._state[2]:
            open_start = n  # the stream ended, or time has reached the end of the open bin
        closed = _trim(buf, open_start)
        self._pending = TokenSequence(*(a[open_start:n].copy() for a in buf))
        return closed


def _trim(seq: TokenSequence, n: int) -> TokenSequence:
    """The first ``n`` tokens; copied when that frees most of the buffer, otherwise a view."""
    if n * 2 < seq.num_tokens:
        return TokenSequence(*(a[:n].copy() for a in seq))
    return TokenSequence(*(a[:n] for a in seq))


def bin_events(events: np.ndarray, sensor_size, cfg: BinningConfig, source: str = "events") -> TokenSequence:
    """Tokens, counts, Δt and times of a whole recording (see the module docstring for what is done).

    ``events`` -- ``(N,)`` :data:`~evmamba.pipeline.events.EVENT_DTYPE`, timestamps in µs, sorted;
    ``sensor_size`` -- ``(W, H, P)``; ``cfg`` -- a :class:`BinningConfig` (or a mapping of its keys).
    Raises ``TypeError``/``ValueError`` naming ``source`` and the field for invalid input (see
    :func:`~evmamba.pipeline.events.validate_events`). An empty recording gives an empty sequence.
    """
    binner = StreamingBinner(sensor_size, cfg, source=source)
    c = binner.cfg
    plain = c.bin_us == 0 and not (
        c.denoise_us
        or c.refractory_us
        or c.t_start_us is not None
        or c.t_stop_us is not None
        or c.max_events is not None
    )
    if plain and isinstance(events, np.ndarray) and events.dtype == EVENT_DTYPE and events.ndim == 1 and events.size:
        # Every event reaches the token loop, which checks coordinates and time order as it reads them:
        # one pass over the events instead of two. Only the first timestamp's sign is left to check.
        if events[0]["t"] < 0:
            validate_events(events, binner.sensor_size, source)
        binner._unchecked = events
        return binner._process(events, final=True)
    validate_events(events, binner.sensor_size, source)
    return binner._process(events, final=True)
