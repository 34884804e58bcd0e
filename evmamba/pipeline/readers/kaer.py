"""kAER ``_td.dat`` files (ATIS change-detection events, as written by the kAER / HOTS tools).

No header: one little-endian 64-bit word per event with t in bits 0-31 (µs), x in bits 32-40, y in
bits 41-48 and the polarity in bit 49 (1 = ON); the upper bits are zero. No package reads this layout, so it
is decoded here with numpy.
"""

from __future__ import annotations

import numpy as np

from evmamba.core.events import SensorSize

from .common import (
    check_path,
    check_policy,
    finish_events,
    pack_events,
    resolve_sensor_size,
    sniff_container,
    unwrap_u32_time,
)


def read_kaer_td(
    path,
    sensor_size=None,
    *,
    on_unsorted: str = "error",
    allow_empty: bool = False,
) -> tuple[np.ndarray, SensorSize]:
    """Read a kAER ``_td.dat`` file; returns ``(events, sensor_size)``.

    The format carries no sensor size: without ``sensor_size`` it is inferred from the largest coordinates
    + 1 (with two polarities). Raises ``ValueError`` naming the file for a truncated file (size not a
    multiple of 8 bytes), a file with a text header (e.g. a Prophesee ``.dat``), words with bits above 49
    set, unsorted times (see ``on_unsorted``) or events outside ``sensor_size``.
    """
    p = check_path(path)
    source = str(p)
    check_policy(on_unsorted, source)
    with open(p, "rb") as fh:
        head = fh.read(256)
    kind = sniff_container(head)
    if kind is not None:
        raise ValueError(f"{source}: not a kAER _td.dat file: it looks like {kind}")
    size_bytes = p.stat().st_size
    if size_bytes % 8:
        raise ValueError(
            f"{source}: truncated or not a kAER _td.dat file: {size_bytes} bytes is not a multiple of 8-byte events"
        )
    words = np.fromfile(p, dtype="<u8")
    high = words >> np.uint64(50)
    if high.any():
        i = int(np.argmax(high != 0))
        raise ValueError(
            f"{source}: not a kAER _td.dat file: word {i} ({int(words[i]):#018x}) has bits above 49 set"
        )
    t = unwrap_u32_time(words & np.uint64(0xFFFFFFFF))
    x = (words >> np.uint64(32)) & np.uint64(0x1FF)
    y = (words >> np.uint64(41)) & np.uint64(0xFF)
    pol = (words >> np.uint64(49)) & np.uint64(1)
    events = pack_events(x, y, t, pol)
    size = resolve_sensor_size(events, sensor_size, None, source)
    return finish_events(events, size, source, on_unsorted, allow_empty), size
