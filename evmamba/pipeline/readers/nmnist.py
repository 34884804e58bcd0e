"""N-MNIST / N-Caltech101 ``.bin`` files and SLAYER's ``.bs2`` (the same 5-byte ATIS layout).

Each event is 5 bytes: ``x`` (8 bits), ``y`` (8 bits), then 24 bits holding the polarity in the top bit and a
23-bit timestamp in µs. A record with ``y == 240`` is a timestamp-overflow marker, not an event: every later
timestamp is offset by one more period of the 23-bit counter.

The decoder is vectorised numpy (one pass, no Python loop over overflow markers) so that reading does not
need to import tonic; the tests check it against ``tonic.io.read_mnist_file`` on the real files.
"""

from __future__ import annotations

import numpy as np

from evmamba.core.events import SensorSize

from .common import check_path, check_policy, finish_events, pack_events, resolve_sensor_size, sniff_container

NMNIST_SENSOR: SensorSize = (34, 34, 2)
_RECORD_BYTES = 5
_OVERFLOW_Y = 240
_TIME_BITS = 23


def read_nmnist_bin(
    path,
    sensor_size=None,
    *,
    on_unsorted: str = "error",
    allow_empty: bool = False,
) -> tuple[np.ndarray, SensorSize]:
    """Read an N-MNIST ``.bin`` / ``.bs2`` file.

    Returns ``(events, sensor_size)``: ``events`` is an ``EVENT_DTYPE`` array (x, y in pixels, t in µs,
    p = 1 for ON). The format has no header: without ``sensor_size`` the N-MNIST sensor (34, 34, 2) is
    returned when every event fits it, else the size is inferred from the largest coordinates + 1 (the same
    layout is used for N-Caltech101 and for 128x128 DVS Gesture conversions).

    Raises ``ValueError`` naming the file for a truncated file (size not a multiple of 5 bytes), a file that
    is recognisably another format, unsorted times (see ``on_unsorted``) or events outside ``sensor_size``.
    """
    p = check_path(path)
    source = str(p)
    check_policy(on_unsorted, source)
    raw = np.fromfile(p, dtype=np.uint8)
    kind = sniff_container(raw[:256].tobytes())
    if kind is not None:
        raise ValueError(f"{source}: not an N-MNIST .bin/.bs2 file: it looks like {kind}")
    if raw.size % _RECORD_BYTES:
        raise ValueError(
            f"{source}: truncated or not an N-MNIST .bin/.bs2 file: {raw.size} bytes is not a multiple of "
            f"{_RECORD_BYTES}-byte events"
        )
    rec = raw.reshape(-1, _RECORD_BYTES)
    t = (
        ((rec[:, 2].astype(np.int64) & 0x7F) << 16)
        | (rec[:, 3].astype(np.int64) << 8)
        | rec[:, 4].astype(np.int64)
    )
    overflow = rec[:, 1] == _OVERFLOW_Y
    if overflow.any():
        t += np.cumsum(overflow, dtype=np.int64) << _TIME_BITS
        keep = ~overflow
        rec, t = rec[keep], t[keep]
    events = pack_events(rec[:, 0], rec[:, 1], t, rec[:, 2] >> 7)
    if sensor_size is None and (events.size == 0 or (events["x"].max() < 34 and events["y"].max() < 34)):
        size = NMNIST_SENSOR
    else:
        size = resolve_sensor_size(events, sensor_size, None, source)
    return finish_events(events, size, source, on_unsorted, allow_empty), size
