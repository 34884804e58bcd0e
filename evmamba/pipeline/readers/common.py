"""Checks and small helpers shared by every event-file reader.

Every reader ends with :func:`finish_events`, which applies the policy for unsorted timestamps, refuses
empty streams unless asked not to, and validates coordinates against the sensor size, so that all formats
fail the same way with a message that names the file and the field.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from evmamba.core.events import EVENT_DTYPE, SensorSize, check_sensor_size
from evmamba.pipeline.events import validate_events

#: Accepted values of ``on_unsorted``: ``"error"`` raises ``ValueError`` naming the first out-of-order event;
#: ``"sort"`` reorders the events by time with a stable sort (events with equal times keep file order).
UNSORTED_POLICIES = ("error", "sort")


def check_path(path, what: str = "path") -> Path:
    """``path`` as a :class:`~pathlib.Path` to an existing regular file.

    Raises ``TypeError`` when it is not a string or path, ``FileNotFoundError`` when it does not exist and
    ``ValueError`` when it is a directory.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a str or os.PathLike; got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if p.is_dir():
        raise ValueError(f"{p}: is a directory, expected an event file")
    return p


def check_policy(on_unsorted: str, source: str) -> str:
    """Return ``on_unsorted`` or raise ``ValueError`` naming ``source`` and the accepted values."""
    if on_unsorted not in UNSORTED_POLICIES:
        raise ValueError(f"{source}: on_unsorted must be one of {UNSORTED_POLICIES}; got {on_unsorted!r}")
    return on_unsorted


def infer_sensor_size(events: np.ndarray, source: str, polarities: int | None = 2) -> SensorSize:
    """Sensor size from the largest coordinates: ``(max x + 1, max y + 1, P)``.

    ``P`` is ``polarities`` when given (camera formats always have two), else ``max p + 1``.
    Raises ``ValueError`` for an empty stream, where nothing can be inferred.
    """
    if events.size == 0:
        raise ValueError(
            f"{source}: the stream has no events, so its sensor size cannot be inferred; pass sensor_size "
            "(and allow_empty=True to accept an empty stream)"
        )
    npol = int(events["p"].max()) + 1 if polarities is None else polarities
    return (int(events["x"].max()) + 1, int(events["y"].max()) + 1, max(npol, 1))


def resolve_sensor_size(
    events: np.ndarray,
    given,
    from_header: SensorSize | None,
    source: str,
    polarities: int | None = 2,
) -> SensorSize:
    """The sensor size a reader returns: the caller's, else the file's header, else inferred from the events."""
    if given is not None:
        return check_sensor_size(given, source)
    if from_header is not None:
        return from_header
    return infer_sensor_size(events, source, polarities)


def finish_events(
    events: np.ndarray,
    sensor_size: SensorSize,
    source: str,
    on_unsorted: str,
    allow_empty: bool,
) -> np.ndarray:
    """Apply the unsorted-time policy and validate ``events`` (``EVENT_DTYPE``) against ``sensor_size``.

    Raises ``ValueError`` naming ``source`` and the field for an empty stream (unless ``allow_empty``),
    out-of-order timestamps (unless ``on_unsorted="sort"``), negative times and coordinates or polarities
    outside the sensor.
    """
    if events.size == 0:
        if not allow_empty:
            raise ValueError(f"{source}: the stream has no events; pass allow_empty=True to accept an empty stream")
        return events
    t = events["t"]
    if events.size > 1:
        from evmamba.pipeline._validate_kernel import backward_steps  # deferred: imports numba

        n_back, i = backward_steps(t)
        if n_back:
            if on_unsorted == "sort":
                events = events[np.argsort(t, kind="stable")]
            else:
                raise ValueError(
                    f"{source}: field 't' is not sorted: event {i + 1} has t={int(t[i + 1])} µs after "
                    f"t={int(t[i])} µs ({int(n_back)} backward steps); pass on_unsorted='sort' to "
                    "sort the events by time"
                )
    return validate_events(events, sensor_size, source)


def unwrap_u32_time(t: np.ndarray) -> np.ndarray:
    """32-bit tick counters (µs) as a continuous ``int64`` time line.

    A drop of more than half the counter range between neighbours is a wrap-around of the counter, not a
    reordering, so ``2**32`` is added from there on. Small backward steps are left for the sort policy.
    """
    out = t.astype(np.int64)
    if out.size > 1:
        wraps = np.diff(out) < -(1 << 31)
        if wraps.any():
            out[1:] += np.cumsum(wraps, dtype=np.int64) << 32
    return out


def pack_events(x, y, t, p) -> np.ndarray:
    """Four equal-length arrays as an ``EVENT_DTYPE`` array (callers have range-checked them)."""
    ev = np.empty(len(t), dtype=EVENT_DTYPE)
    ev["x"] = x
    ev["y"] = y
    ev["t"] = t
    ev["p"] = p
    return ev


def sniff_container(head: bytes) -> str | None:
    """Name of a container recognisable from a file's first bytes, or ``None`` for raw binary data.

    Used by the header-less formats (N-MNIST ``.bin``, kAER ``_td.dat``) to refuse a file that is plainly
    something else instead of decoding it into garbage events.
    """
    if head.startswith(b"#!AER-DAT"):
        return "an AEDAT file"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (.npz?)"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file"
    if head.startswith(b"% "):
        line_end = head.find(b"\n")
        line = head[:line_end] if line_end > 0 else head
        if all(32 <= c < 127 or c in (9, 13) for c in line):
            return "a file with a Prophesee text header"
    return None
