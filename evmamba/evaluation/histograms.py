"""Event-count histograms: one fixed-length vector per recording, for the nearest-neighbour baseline.

A recording's histogram counts its events in square spatial cells of ``cell`` x ``cell`` pixels, in
``time_bins`` equal slices of its own duration and per polarity. With a sensor of size ``(W, H, P)`` the
grid has ``n_x = ceil(W / cell)`` by ``n_y = ceil(H / cell)`` cells (the last row and column may be cut
short by the sensor's edge), and the histogram has shape ``(time_bins, n_y, n_x, P)``. On 1-D spike data
(sensor ``(C, 1, P)``, x = channel) a cell is a group of ``cell`` neighbouring channels.

Time slice ``b`` of an event at ``t`` µs is ``(t - t_first) * time_bins // (t_last - t_first + 1)``: every
slice covers the same share of the recording, the first and last events included, whatever the clock's
origin. Since ``floor(floor(x) / m) == floor(x / m)`` for a positive integer ``m``, the histogram with
``T / m`` slices is exactly the sum of groups of ``m`` neighbouring slices of the one with ``T``:
:func:`coarsen_time` makes it without reading the events again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.checks import is_int
from ..core.events import check_sensor_size
from ..pipeline.events import validate_events

#: The default grid has at most this many spatial cells (about 16 x 16 on a square sensor).
DEFAULT_MAX_CELLS = 256


def _positive_int(name: str, value, source: str) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{source}: {name} must be a positive integer; got {value!r}")
    return int(value)


def cell_grid(sensor_size, cell: int, source: str = "histogram") -> tuple[int, int]:
    """``(n_x, n_y)``: the number of cells across and down a sensor ``(W, H, P)`` for square cells of
    ``cell`` pixels (channels on 1-D data)."""
    w, h, _ = check_sensor_size(sensor_size, f"{source}: sensor_size")
    cell = _positive_int("cell", cell, source)
    return -(-w // cell), -(-h // cell)


def default_cell(sensor_size, max_cells: int = DEFAULT_MAX_CELLS, source: str = "histogram") -> int:
    """The smallest square cell (pixels; channels on 1-D data) whose grid has at most ``max_cells`` cells.

    34x34 -> 3 (12 x 12 cells); 128x128 -> 8 (16 x 16); 1280x720 -> 61 (21 x 12); SHD's (700, 1, 1) -> 3
    (234 channel groups). A sensor with no more than ``max_cells`` pixels gets 1 (every pixel its own cell).
    """
    w, h, _ = check_sensor_size(sensor_size, f"{source}: sensor_size")
    max_cells = _positive_int("max_cells", max_cells, source)
    # A lower bound from the area (cells * cell^2 >= W * H), then step up: at most a few steps.
    cell = max(1, math.isqrt(max(0, (w * h) // max_cells - 1)))
    while (-(-w // cell)) * (-(-h // cell)) > max_cells:
        cell += 1
    return cell


@dataclass(frozen=True)
class HistogramSettings:
    """How recordings become vectors: ``cell`` (pixels, or channels on 1-D data), ``time_bins`` (equal
    slices of each recording's duration) and ``sqrt`` (square roots of the counts before the L2
    normalisation, which damps the weight of busy cells)."""

    cell: int
    time_bins: int
    sqrt: bool = False

    def __post_init__(self) -> None:
        _positive_int("cell", self.cell, "HistogramSettings")
        _positive_int("time_bins", self.time_bins, "HistogramSettings")
        if not isinstance(self.sqrt, (bool, np.bool_)):
            raise TypeError(f"HistogramSettings: sqrt must be a bool; got {type(self.sqrt).__name__}")

    def describe(self, sensor_size) -> str:
        """A short human description, e.g. ``"3 px cells (12x12), 4 time bins, sqrt counts"``."""
        n_x, n_y = cell_grid(sensor_size, self.cell)
        if int(sensor_size[1]) == 1:
            where = f"{self.cell}-channel groups ({n_x})"
        else:
            where = f"{self.cell} px cells ({n_x}x{n_y})"
        plural = "s" if self.time_bins > 1 else ""
        return f"{where}, {self.time_bins} time bin{plural}{', sqrt counts' if self.sqrt else ''}"


def count_histogram(events: np.ndarray, sensor_size, cell: int, time_bins: int, source: str = "events") -> np.ndarray:
    """Event counts of one recording, float32 of shape ``(time_bins, n_y, n_x, P)`` (see the module docstring);
    all zeros for a recording without events.

    ``events`` is a 1-D :data:`~evmamba.pipeline.events.EVENT_DTYPE` array, checked against ``sensor_size``
    (``TypeError``/``ValueError`` naming ``source`` and the field). One compiled pass over the events.
    """
    from ._kernels import accumulate_cells

    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    validate_events(events, sensor_size, source)
    cell = _positive_int("cell", cell, source)
    time_bins = _positive_int("time_bins", time_bins, source)
    n_x, n_y = cell_grid(sensor_size, cell, source)
    n_pol = sensor_size[2]
    out = np.zeros(time_bins * n_y * n_x * n_pol, np.float32)
    if events.size:
        t0 = int(events["t"][0])
        span = int(events["t"][-1]) - t0 + 1
        if span > (1 << 62) // time_bins:  # keep (t - t0) * time_bins inside int64
            raise ValueError(f"{source}: field 't' spans {span} µs, too long for {time_bins} time bins")
        accumulate_cells(events, cell, n_x, n_pol, time_bins, t0, span, out)
    return out.reshape(time_bins, n_y, n_x, n_pol)


def coarsen_time(counts: np.ndarray, time_bins: int) -> np.ndarray:
    """Histograms ``(N, T, ...)`` with ``T`` slices -> ``(N, time_bins, ...)`` by summing groups of
    ``T // time_bins`` neighbouring slices, which equals counting the events again with ``time_bins`` slices
    (see the module docstring). ``ValueError`` when ``time_bins`` does not divide ``T``."""
    counts = np.asarray(counts)
    if counts.ndim < 2:
        raise ValueError(f"coarsen_time: counts must have shape (N, T, ...); got {counts.shape}")
    t = counts.shape[1]
    time_bins = _positive_int("time_bins", time_bins, "coarsen_time")
    if t % time_bins:
        raise ValueError(f"coarsen_time: {time_bins} time bins do not divide the {t} of the histograms")
    if time_bins == t:
        return counts
    return counts.reshape(counts.shape[0], time_bins, t // time_bins, *counts.shape[2:]).sum(axis=2)


def feature_vectors(counts: np.ndarray, sqrt: bool = False) -> np.ndarray:
    """``(N, ...)`` count histograms -> ``(N, D)`` float32 rows of unit L2 norm (optionally of the square roots
    of the counts), so that a dot product is the cosine similarity. An all-zero row (an empty recording)
    stays zero: it is equally far from everything."""
    x = np.asarray(counts, dtype=np.float32).reshape(len(counts), -1)
    if np.any(x < 0):
        raise ValueError("feature_vectors: counts must be non-negative")
    x = np.sqrt(x) if sqrt else x.copy()
    norms = np.sqrt(np.einsum("nd,nd->n", x, x, dtype=np.float64))
    x /= np.where(norms > 0, norms, 1.0).astype(np.float32)[:, None]
    return x
