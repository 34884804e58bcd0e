"""AEDAT files: 2.0 from a DVS128 (jAER) and 4.0 (DV / iniVation, decoded by the ``aedat`` package).

AEDAT 2.0 is a text header of ``#`` lines (the first is ``#!AER-DAT2.0``) followed by big-endian pairs of
32-bit address and 32-bit timestamp (µs). For the DVS128 the address holds, in jAER's bit layout,
the polarity in bit 0 (1 = OFF), x in bits 1-7 and y in bits 8-14; bit 15 marks special (external
input) events, which are not pixel events and are dropped. tonic 1.7's ``read_dvs_128`` cannot be used:
it fails on the 3-value header tuple and takes x and y from the wrong bits.

x is the address field as stored. jAER's own DVS128 extractor mirrors it (x = 127 - field), so jAER shows
a recording left-right flipped with respect to what this reader returns; ``flip_x=True`` gives jAER's view.
The kAER ``_td.dat`` copies of POKER-DVS use the unmirrored x, like this reader's default.
"""

from __future__ import annotations

import numpy as np

from evmamba.core.events import SensorSize

from .common import check_path, check_policy, finish_events, pack_events, resolve_sensor_size, unwrap_u32_time

DVS128_SENSOR: SensorSize = (128, 128, 2)
# jAER mirrors x about the DVS128's 128 columns: x = DVS128_MIRROR - field.
DVS128_MIRROR = DVS128_SENSOR[0] - 1
_AEDAT_MAGIC = b"#!AER-DAT"
_SPECIAL_EVENT_BIT = 1 << 15
# Chip class names written by jAER for the DVS128 (Tmpdiff128 is the older name of the same sensor).
_DVS128_CHIPS = ("DVS128", "Tmpdiff128")


def _aedat2_header(data: bytes, source: str) -> tuple[str, int, list[str]]:
    """``(version, offset of the first event, header lines)`` of an AEDAT file held in ``data``."""
    if not data.startswith(_AEDAT_MAGIC):
        raise ValueError(f"{source}: not an AEDAT file (it does not start with '#!AER-DAT')")
    lines: list[str] = []
    pos = 0
    while pos < len(data) and data[pos] == ord("#"):
        end = data.find(b"\n", pos)
        if end < 0:
            raise ValueError(f"{source}: truncated AEDAT header (a '#' line has no end)")
        lines.append(data[pos:end].rstrip(b"\r").decode("latin-1"))
        pos = end + 1
    version = lines[0][len(_AEDAT_MAGIC) :].strip()
    return version, pos, lines


def read_aedat2_dvs128(
    path,
    sensor_size=None,
    *,
    on_unsorted: str = "error",
    allow_empty: bool = False,
    flip_x: bool = False,
) -> tuple[np.ndarray, SensorSize]:
    """Read an AEDAT 2.0 recording from a DVS128 (jAER address layout, see the module docstring).

    Returns ``(events, sensor_size)`` with x = ``(a >> 1) & 0x7F``, y = ``(a >> 8) & 0x7F``,
    p = ``1 - (a & 1)`` (1 = ON) and t in µs (32-bit counter wrap-arounds are unwrapped). The sensor size is
    ``sensor_size`` when given (e.g. POKER-DVS crops use (35, 35, 2)), else the DVS128's (128, 128, 2).

    ``flip_x=True`` mirrors x as jAER's DVS128 extractor does: x = 127 - ``((a >> 1) & 0x7F)``, about the
    full 128-column array whatever ``sensor_size`` is. A crop that sits at the left of the array (POKER-DVS:
    x <= 32) then lands at its right (x >= 95) and needs the full (128, 128, 2) sensor, the default.

    Raises ``ValueError`` naming the file for a missing or non-2.x ``#!AER-DAT`` header, a truncated event
    block, a header naming another chip, addresses that use bits above 15, unsorted times (see
    ``on_unsorted``) or events outside ``sensor_size``; ``TypeError`` when ``flip_x`` is not a bool.
    """
    p = check_path(path)
    source = str(p)
    check_policy(on_unsorted, source)
    if not isinstance(flip_x, (bool, np.bool_)):
        raise TypeError(f"{source}: flip_x must be True or False; got {flip_x!r}")
    data = p.read_bytes()
    version, start, lines = _aedat2_header(data, source)
    if not version.startswith("2"):
        hint = " (use read_aedat4)" if version.startswith("4") else ""
        raise ValueError(f"{source}: AEDAT version {version!r} is not 2.x{hint}")
    for line in lines:
        if line.startswith("# AEChip:"):
            chip = line.split(":", 1)[1].strip()
            if not any(name in chip for name in _DVS128_CHIPS):
                raise ValueError(
                    f"{source}: AEChip {chip!r} is not a DVS128; only the DVS128 address layout is decoded"
                )
    n_bytes = len(data) - start
    if n_bytes % 8:
        raise ValueError(
            f"{source}: truncated AEDAT 2.0 file: {n_bytes} bytes after the header is not a multiple of 8-byte events"
        )
    rec = np.frombuffer(data, dtype=[("a", ">u4"), ("t", ">u4")], offset=start)
    addr = rec["a"].astype(np.int64)
    if (addr >> 16).any():
        bad = int(addr[np.argmax(addr >> 16)])
        raise ValueError(
            f"{source}: field 'address' has value {bad:#x}, which uses bits above 15: not a DVS128 recording"
        )
    t = unwrap_u32_time(rec["t"])
    pixel = (addr & _SPECIAL_EVENT_BIT) == 0
    if not pixel.all():
        addr, t = addr[pixel], t[pixel]
    x = (addr >> 1) & 0x7F
    if flip_x:
        x = DVS128_MIRROR - x
    events = pack_events(x, (addr >> 8) & 0x7F, t, 1 - (addr & 1))
    size = resolve_sensor_size(events, sensor_size, DVS128_SENSOR, source)
    return finish_events(events, size, source, on_unsorted, allow_empty), size


def read_aedat4(
    path,
    sensor_size=None,
    *,
    on_unsorted: str = "error",
    allow_empty: bool = False,
) -> tuple[np.ndarray, SensorSize]:
    """Read the polarity events of an AEDAT 4.0 file with the ``aedat`` package.

    Frames, IMU and trigger streams are skipped; when a file has several event streams the one with the
    lowest id is read. Returns ``(events, sensor_size)``; the sensor size comes from the event stream's
    width and height in the header unless ``sensor_size`` is given. Times are the file's (absolute µs).

    Raises ``ValueError`` naming the file when it is corrupt or truncated, has no event stream, has
    unsorted times (see ``on_unsorted``) or events outside ``sensor_size``.
    """
    import aedat  # deferred: only needed for this format

    p = check_path(path)
    source = str(p)
    check_policy(on_unsorted, source)
    try:
        decoder = aedat.Decoder(str(p))
        streams = decoder.id_to_stream()
        event_ids = sorted(i for i, s in streams.items() if s.get("type") == "events")
        if not event_ids:
            kinds = sorted({s.get("type") for s in streams.values()})
            raise ValueError(f"{source}: the AEDAT 4 file has no event stream (streams: {kinds})")
        stream_id = event_ids[0]
        packets = [pk["events"] for pk in decoder if pk["stream_id"] == stream_id and "events" in pk]
    except RuntimeError as exc:  # the Rust decoder reports corrupt, truncated and foreign files this way
        raise ValueError(f"{source}: corrupt, truncated or not an AEDAT 4 file ({exc})") from None
    info = streams[stream_id]
    header_size = None
    if info.get("width") and info.get("height"):
        header_size = (int(info["width"]), int(info["height"]), 2)
    if packets:
        raw = np.concatenate(packets)
        if raw.size and int(raw["t"].max()) >= 1 << 63:
            raise ValueError(f"{source}: field 't' has a timestamp beyond the int64 range")
        events = pack_events(raw["x"], raw["y"], raw["t"].astype(np.int64), raw["on"].astype(np.uint8))
    else:
        events = pack_events([], [], [], [])
    size = resolve_sensor_size(events, sensor_size, header_size, source)
    return finish_events(events, size, source, on_unsorted, allow_empty), size
