"""Prophesee files: EVT 2.0 and EVT 3.0 ``.raw`` and the older ``.dat``, decoded by evmamba itself.

All three start with a text header of ``% key value`` lines, parsed here for the format and the sensor
geometry. The EVT words are decoded by :mod:`.evt` (written from Prophesee's specifications); a DAT file
of CD events is, after the header, one byte of event type, one byte of event size (8), then one 64-bit
little-endian record per event: t (µs) in the low 32 bits, then x in bits 32-45, y in bits 46-59 and the
polarity in bits 60-63.

Sensor size, in order: ``sensor_size`` when given; the header's geometry (``% geometry WxH``,
``% format EVT3;height=H;width=W`` or ``% Width``/``% Height`` lines); the sensor of the camera named by
``% plugin_name`` (Gen3 VGA 640x480, Gen4/IMX636 HD 1280x720); else the largest coordinates + 1.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from evmamba.core.events import SensorSize

from .common import check_path, check_policy, finish_events, pack_events, resolve_sensor_size, unwrap_u32_time
from .evt import WORD_BYTES, decode_evt2, decode_evt3

# plugin_name prefix -> (width, height); longest prefixes first so that "gen41" wins over "gen4".
_PLUGIN_SENSORS = (
    ("hal_plugin_gen41", (1280, 720)),
    ("hal_plugin_imx636", (1280, 720)),
    ("hal_plugin_gen4", (1280, 720)),
    ("hal_plugin_gen31", (640, 480)),
    ("hal_plugin_gen3", (640, 480)),
)
# DAT stores one 64-bit record per event after a 2-byte (event type, event size) preamble. Event type 0x00
# is "Event2d" (ATIS, e.g. N-CARS) and 0x0C "EventCD"; both use the record layout of the module docstring.
_DAT_RECORD = np.dtype([("t", "<u4"), ("data", "<u4")])
_DAT_CD_TYPES = (0x00, 0x0C)
_DECODERS = {"evt2": decode_evt2, "evt3": decode_evt3}


def read_prophesee_header(data: bytes, source: str) -> tuple[dict[str, str], int]:
    """Parse the ``%`` header of a Prophesee file held in ``data``.

    Returns ``(fields, offset)``: ``fields`` maps the lower-cased first word of each line to the rest of the
    line (``"evt" -> "3.0"``, ``"plugin_name" -> "hal_plugin_gen41_evk3"``), ``offset`` is where the binary
    part starts. Raises ``ValueError`` naming ``source`` when there is no header or a line has no end.
    """
    if not data.startswith(b"%"):
        raise ValueError(f"{source}: not a Prophesee file (no '%' text header)")
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] == ord("%"):
        end = data.find(b"\n", pos)
        if end < 0:
            raise ValueError(f"{source}: truncated Prophesee header (a '%' line has no end)")
        line = data[pos + 1 : end].decode("latin-1").strip()
        pos = end + 1
        if line.lower() == "end":
            break
        key, _, value = line.partition(" ")
        if key:
            fields.setdefault(key.lower(), value.strip())
    return fields, pos


def raw_encoding(fields: dict[str, str]) -> str | None:
    """``"evt2"``, ``"evt3"`` or the unsupported encoding named by a ``.raw`` header; ``None`` if unnamed."""
    evt = fields.get("evt")
    if evt is not None:
        return {"2.0": "evt2", "3.0": "evt3"}.get(evt, f"EVT {evt}")
    fmt = fields.get("format")
    if fmt is not None:
        name = fmt.split(";", 1)[0].strip().upper()
        return {"EVT2": "evt2", "EVT3": "evt3"}.get(name, name)
    return None


def _header_geometry(fields: dict[str, str]) -> SensorSize | None:
    geometry = fields.get("geometry")
    if geometry:
        m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", geometry)
        if m:
            return (int(m.group(1)), int(m.group(2)), 2)
    fmt = fields.get("format", "")
    w = re.search(r"width=(\d+)", fmt)
    h = re.search(r"height=(\d+)", fmt)
    if w and h:
        return (int(w.group(1)), int(h.group(1)), 2)
    if fields.get("width", "").isdigit() and fields.get("height", "").isdigit():
        return (int(fields["width"]), int(fields["height"]), 2)
    plugin = fields.get("plugin_name", "")
    for prefix, (w_px, h_px) in _PLUGIN_SENSORS:
        if plugin.startswith(prefix):
            return (w_px, h_px, 2)
    return None


def _header_from(fh, source: str) -> tuple[dict[str, str], int]:
    """Read the ``%`` lines at the start of the open binary file ``fh``; leave it at the first data byte."""
    lines = []
    while fh.peek(1)[:1] == b"%":
        line = fh.readline()
        lines.append(line)
        if not line.endswith(b"\n") or line[1:].strip().lower() == b"end":
            break
    return read_prophesee_header(b"".join(lines), source)


def read_prophesee_file_header(path) -> tuple[dict[str, str], int]:
    """:func:`read_prophesee_header` of a file, reading only its header lines, whatever their length."""
    p = check_path(path)
    with open(p, "rb") as fh:
        return _header_from(fh, str(p))


def _read_file(p: Path, source: str) -> tuple[dict[str, str], np.ndarray]:
    """``(header fields, the bytes after the header as a uint8 array)`` of a Prophesee file.

    The data goes from the file straight into the array: one copy, where ``read_bytes`` and an array view
    of it would make two.
    """
    with open(p, "rb") as fh:
        fields, _ = _header_from(fh, source)
        return fields, np.fromfile(fh, dtype=np.uint8)


def _check_raw_header(fields: dict[str, str], encoding: str, source: str) -> None:
    found = raw_encoding(fields)
    if found is None:
        raise ValueError(f"{source}: the header names no event format ('% evt' or '% format' line)")
    if found != encoding:
        raise ValueError(f"{source}: the header says {found}, not {encoding}")


def _read_raw(
    p: Path, encoding: str, sensor_size, on_unsorted: str, allow_empty: bool
) -> tuple[np.ndarray, SensorSize]:
    source = str(p)
    check_policy(on_unsorted, source)
    fields, body = _read_file(p, source)
    _check_raw_header(fields, encoding, source)
    n_bytes = body.size
    word = WORD_BYTES[encoding]
    if n_bytes % word:
        decoder = _DECODERS[encoding].__name__
        raise ValueError(
            f"{source}: truncated {encoding} file: {n_bytes} bytes after the header is not a multiple of "
            f"{word}-byte words (cut while writing? evmamba.pipeline.readers.evt.{decoder} decodes the whole "
            "words of the data after the header)"
        )
    events, stats = _DECODERS[encoding](body, source)
    if stats.unknown:
        # Reserved word types do not come from a camera: say so (corrupt data, or a newer format revision),
        # but keep the events, which do not depend on those words.
        warnings.warn(
            f"{source}: skipped {stats.unknown} of {stats.words} {encoding} words of a reserved type", stacklevel=3
        )
    size = resolve_sensor_size(events, sensor_size, _header_geometry(fields), source)
    w, h, npol = size
    if events.size and stats.backward_steps == 0 and stats.max_x < w and stats.max_y < h and npol == 2:
        # The decoder has checked on the way what finish_events would check in another pass: times in
        # order, coordinates inside the sensor (t >= 0 and p in {0, 1} hold by construction).
        return events, size
    return finish_events(events, size, source, on_unsorted, allow_empty), size


def _read_dat(p: Path, sensor_size, on_unsorted: str, allow_empty: bool) -> tuple[np.ndarray, SensorSize]:
    source = str(p)
    check_policy(on_unsorted, source)
    fields, body = _read_file(p, source)
    if body.size < 2:
        raise ValueError(f"{source}: truncated DAT file: no event type/size bytes after the header")
    ev_type, ev_size = int(body[0]), int(body[1])
    if ev_type not in _DAT_CD_TYPES or ev_size != _DAT_RECORD.itemsize:
        raise ValueError(
            f"{source}: DAT event type {ev_type:#x} with {ev_size}-byte records is not a CD (change "
            "detection) event file"
        )
    n_bytes = body.size - 2
    if n_bytes % _DAT_RECORD.itemsize:
        raise ValueError(
            f"{source}: truncated prophesee_dat file: {n_bytes} bytes after the header is not a multiple of "
            f"{_DAT_RECORD.itemsize}-byte records"
        )
    rec = body[2:].view(_DAT_RECORD)
    word = rec["data"]
    pol = word >> 28
    if pol.size and int(pol.max()) > 1:
        i = int(np.argmax(pol > 1))
        raise ValueError(
            f"{source}: field 'p' of event {i} has value {int(pol[i])}, expected 0 or 1 (corrupt file?)"
        )
    events = pack_events(word & 0x3FFF, (word >> 14) & 0x3FFF, unwrap_u32_time(rec["t"]), pol)
    size = resolve_sensor_size(events, sensor_size, _header_geometry(fields), source)
    return finish_events(events, size, source, on_unsorted, allow_empty), size


def read_prophesee_evt2(
    path,
    sensor_size=None,
    *,
    on_unsorted: str = "error",
    allow_empty: bool = False,
) -> tuple[np.ndarray, SensorSize]:
    """Read a Prophesee EVT 2.0 ``.raw`` file; returns ``(events, sensor_size)`` (sensor: module docstring).

    Decoded by :func:`~evmamba.pipeline.readers.evt.decode_evt2`: t in µs from the sensor's 34-bit clock
    (wrap-arounds counted), p = 1 for CD_ON; trigger and extension words are skipped. Raises ``ValueError``
    naming the file when the header is missing or names another format, the data is truncated (a partial
    last word), for unsorted times (see ``on_unsorted``) and for events
    outside ``sensor_size`` (naming the field and the value). Warns when a few reserved words were skipped.
    """
    return _read_raw(check_path(path), "evt2", sensor_size, on_unsorted, allow_empty)


def read_prophesee_evt3(
    path,
    sensor_size=None,
    *,
    on_unsorted: str = "error",
    allow_empty: bool = False,
) -> tuple[np.ndarray, SensorSize]:
    """Read a Prophesee EVT 3.0 ``.raw`` file; returns ``(events, sensor_size)`` (sensor: module docstring).

    Decoded by :func:`~evmamba.pipeline.readers.evt.decode_evt3`: t in µs from the 24-bit time base
    (TIME_HIGH bits 12-23, TIME_LOW bits 0-11, wrap-arounds counted), vectors expanded. Raises
    ``ValueError`` as :func:`read_prophesee_evt2` does.
    """
    return _read_raw(check_path(path), "evt3", sensor_size, on_unsorted, allow_empty)


def read_prophesee_dat(
    path,
    sensor_size=None,
    *,
    on_unsorted: str = "error",
    allow_empty: bool = False,
) -> tuple[np.ndarray, SensorSize]:
    """Read a Prophesee ``.dat`` file of CD events; returns ``(events, sensor_size)``.

    Record layout: module docstring; 32-bit time wrap-arounds are unwrapped. Old DAT files (e.g. N-CARS)
    have no geometry in the header; their sensor size is then inferred from the largest coordinates + 1.
    Raises ``ValueError`` naming the file when the header is missing, the event type is not CD, the data is
    truncated, a polarity is not 0 or 1, for unsorted times (see ``on_unsorted``) and for events outside
    ``sensor_size``.
    """
    return _read_dat(check_path(path), sensor_size, on_unsorted, allow_empty)
