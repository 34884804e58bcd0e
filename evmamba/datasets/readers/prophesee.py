"""Prophesee files: EVT 2.0 and EVT 3.0 ``.raw`` and the older ``.dat``, decoded by ``expelliarmus``.

All three start with a text header of ``% key value`` lines. expelliarmus decodes the binary part; this
module parses the header itself (for the format and the sensor geometry) and checks the file before handing
it over, because expelliarmus does not stop on a header without an end and returns nothing for a file
without events.

Sensor size, in order: ``sensor_size`` when given; the header's geometry (``% geometry WxH``,
``% format EVT3;height=H;width=W`` or ``% Width``/``% Height`` lines); the sensor of the camera named by
``% plugin_name`` (Gen3 VGA 640x480, Gen4/IMX636 HD 1280x720); else the largest coordinates + 1.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from evmamba.pipeline.events import SensorSize

from .common import check_path, check_policy, finish_events, pack_events, resolve_sensor_size

# plugin_name prefix -> (width, height); longest prefixes first so that "gen41" wins over "gen4".
_PLUGIN_SENSORS = (
    ("hal_plugin_gen41", (1280, 720)),
    ("hal_plugin_imx636", (1280, 720)),
    ("hal_plugin_gen4", (1280, 720)),
    ("hal_plugin_gen31", (640, 480)),
    ("hal_plugin_gen3", (640, 480)),
)
# Bytes per word after the header: EVT 2.0 packs an event in 32 bits, EVT 3.0 uses 16-bit words,
# DAT stores one 64-bit record per event after a 2-byte (event type, event size) preamble.
_WORD_BYTES = {"evt2": 4, "evt3": 2, "prophesee_dat": 8}
_DAT_CD_TYPES = (0x00, 0x0C)


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


def _read_with_expelliarmus(
    p: Path,
    encoding: str,
    sensor_size,
    on_unsorted: str,
    allow_empty: bool,
) -> tuple[np.ndarray, SensorSize]:
    source = str(p)
    check_policy(on_unsorted, source)
    data = p.read_bytes()
    fields, start = read_prophesee_header(data, source)
    if encoding == "prophesee_dat":
        if len(data) - start < 2:
            raise ValueError(f"{source}: truncated DAT file: no event type/size bytes after the header")
        ev_type, ev_size = data[start], data[start + 1]
        if ev_type not in _DAT_CD_TYPES or ev_size != 8:
            raise ValueError(
                f"{source}: DAT event type {ev_type:#x} with {ev_size}-byte records is not a CD (change "
                "detection) event file"
            )
        start += 2
    else:
        found = raw_encoding(fields)
        if found is None:
            raise ValueError(f"{source}: the header names no event format ('% evt' or '% format' line)")
        if found != encoding:
            raise ValueError(f"{source}: the header says {found}, not {encoding}")
    n_bytes = len(data) - start
    word = _WORD_BYTES[encoding]
    if n_bytes % word:
        raise ValueError(
            f"{source}: truncated {encoding} file: {n_bytes} bytes after the header is not a multiple of "
            f"{word}-byte words"
        )
    if n_bytes == 0:
        events = pack_events([], [], [], [])
    else:
        from expelliarmus import Wizard  # deferred: only needed for these formats

        wizard_encoding = "dat" if encoding == "prophesee_dat" else encoding
        raw = Wizard(encoding=wizard_encoding).read(p)
        if raw is None:
            raise ValueError(f"{source}: expelliarmus decoded no events from this {encoding} file (corrupt?)")
        for field in ("x", "y", "t"):
            if raw.size and int(raw[field].min()) < 0:
                low = int(raw[field].min())
                raise ValueError(f"{source}: field '{field}' has a negative value {low} (corrupt file?)")
        if raw.size and int(raw["p"].max()) > 1:
            raise ValueError(f"{source}: field 'p' has value {int(raw['p'].max())}, expected 0 or 1 (corrupt file?)")
        events = pack_events(raw["x"], raw["y"], raw["t"], raw["p"])
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

    Raises ``ValueError`` naming the file when the header is missing, names another format or the data is
    truncated, for unsorted times (see ``on_unsorted``) and for events outside ``sensor_size``.
    """
    return _read_with_expelliarmus(check_path(path), "evt2", sensor_size, on_unsorted, allow_empty)


def read_prophesee_evt3(
    path,
    sensor_size=None,
    *,
    on_unsorted: str = "error",
    allow_empty: bool = False,
) -> tuple[np.ndarray, SensorSize]:
    """Read a Prophesee EVT 3.0 ``.raw`` file; returns ``(events, sensor_size)`` (sensor: module docstring).

    Raises ``ValueError`` as :func:`read_prophesee_evt2` does.
    """
    return _read_with_expelliarmus(check_path(path), "evt3", sensor_size, on_unsorted, allow_empty)


def read_prophesee_dat(
    path,
    sensor_size=None,
    *,
    on_unsorted: str = "error",
    allow_empty: bool = False,
) -> tuple[np.ndarray, SensorSize]:
    """Read a Prophesee ``.dat`` file of CD events; returns ``(events, sensor_size)``.

    Old DAT files (e.g. N-CARS) have no geometry in the header; their sensor size is then inferred from the
    largest coordinates + 1. Raises ``ValueError`` naming the file when the header is missing, the event
    type is not CD, the data is truncated, for unsorted times (see ``on_unsorted``) and for events outside
    ``sensor_size``.
    """
    return _read_with_expelliarmus(check_path(path), "prophesee_dat", sensor_size, on_unsorted, allow_empty)
