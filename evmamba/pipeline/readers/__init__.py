"""Event-file readers: every format to one ``EVENT_DTYPE`` array plus the sensor size.

:func:`read_events` picks the reader from the file's extension and, where an extension is shared, its header:

============================  ===================  ==============================================
extension                     format name          reader
============================  ===================  ==============================================
``.bin``, ``.bs2``            ``nmnist_bin``       :func:`read_nmnist_bin` (5-byte ATIS events)
``.aedat`` (``#!AER-DAT2``)   ``aedat2_dvs128``    :func:`read_aedat2_dvs128` (jAER DVS128)
``.aedat4``, ``.aedat`` (v4)  ``aedat4``           :func:`read_aedat4` (``aedat`` package)
``.raw`` (``% evt 2.0``)      ``evt2``             :func:`read_prophesee_evt2` (our EVT 2.0 decoder)
``.raw`` (``% evt 3.0``)      ``evt3``             :func:`read_prophesee_evt3` (our EVT 3.0 decoder)
``.dat`` with a ``%`` header  ``prophesee_dat``    :func:`read_prophesee_dat` (64-bit CD records)
``.dat`` without a header     ``kaer_td``          :func:`read_kaer_td` (64-bit kAER words)
``.npy``, ``.npz``            ``numpy``            :func:`read_numpy`
``.h5``, ``.hdf5``            ``hdf5``             :func:`read_hdf5_events`
============================  ===================  ==============================================

All readers share the keyword options ``on_unsorted`` (``"error"``, the default, or ``"sort"``: a stable
sort by time, for recordings with small reorderings) and ``allow_empty`` (``False``: an empty stream is a
``ValueError``). Their errors name the file and the field or what is wrong with it. One option is specific
to a format: ``flip_x`` mirrors DVS128 AEDAT 2.0 recordings as jAER shows them (x = 127 - x; see
:func:`read_aedat2_dvs128`).
"""

from __future__ import annotations

import numpy as np

from evmamba.core.events import SensorSize

from .aedat import DVS128_SENSOR, read_aedat2_dvs128, read_aedat4
from .arrays import events_from_fields, events_from_structured, read_hdf5_events, read_numpy, write_events
from .common import UNSORTED_POLICIES, check_path
from .kaer import read_kaer_td
from .nmnist import NMNIST_SENSOR, read_nmnist_bin
from .prophesee import (
    raw_encoding,
    read_prophesee_dat,
    read_prophesee_evt2,
    read_prophesee_evt3,
    read_prophesee_file_header,
    read_prophesee_header,
)

READERS = {
    "nmnist_bin": read_nmnist_bin,
    "aedat2_dvs128": read_aedat2_dvs128,
    "aedat4": read_aedat4,
    "evt2": read_prophesee_evt2,
    "evt3": read_prophesee_evt3,
    "prophesee_dat": read_prophesee_dat,
    "kaer_td": read_kaer_td,
    "numpy": read_numpy,
    "hdf5": read_hdf5_events,
}
FORMATS = tuple(READERS)

#: Every extension :func:`read_events` recognises (lower case, with the dot).
EXTENSIONS = (".bin", ".bs2", ".aedat", ".aedat4", ".raw", ".dat", ".npy", ".npz", ".h5", ".hdf5")
_BY_EXTENSION = {
    ".bin": "nmnist_bin",
    ".bs2": "nmnist_bin",
    ".aedat4": "aedat4",
    ".npy": "numpy",
    ".npz": "numpy",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
}


def detect_format(path) -> str:
    """The format name (one of :data:`FORMATS`) of an event file, from its extension and header.

    Raises ``ValueError`` naming the file for an unknown extension, an AEDAT version other than 2 or 4, a
    ``.raw`` header that names no supported encoding.
    """
    p = check_path(path)
    suffix = p.suffix.lower()
    if suffix in _BY_EXTENSION:
        return _BY_EXTENSION[suffix]
    with open(p, "rb") as fh:
        head = fh.read(4096)
    if suffix == ".aedat":
        if head.startswith(b"#!AER-DAT2"):
            return "aedat2_dvs128"
        if head.startswith(b"#!AER-DAT4"):
            return "aedat4"
        first = head.split(b"\n", 1)[0][:40]
        raise ValueError(f"{p}: unsupported AEDAT version (first line {first!r}); AEDAT 2.0 (DVS128) and 4.0 are read")
    if suffix == ".dat":
        # A Prophesee DAT starts with '% ' text lines; a kAER file has no header (its first byte is time).
        return "prophesee_dat" if head.startswith(b"% ") else "kaer_td"
    if suffix == ".raw":
        if not head.startswith(b"%"):
            raise ValueError(f"{p}: not a Prophesee .raw file (no '%' text header)")
        fields, _ = read_prophesee_file_header(p)
        enc = raw_encoding(fields)
        if enc in ("evt2", "evt3"):
            return enc
        named = f"names {enc}" if enc else "names no encoding"
        raise ValueError(f"{p}: the .raw header {named}; EVT 2.0 and EVT 3.0 are read (pass format= to force one)")
    raise ValueError(
        f"{p}: unknown event-file extension {suffix or '(none)'!r}; known: {', '.join(EXTENSIONS)} "
        f"(or pass format= one of {FORMATS})"
    )


def read_events(
    path,
    sensor_size=None,
    format: str | None = None,
    *,
    on_unsorted: str = "error",
    allow_empty: bool = False,
    flip_x: bool = False,
) -> tuple[np.ndarray, SensorSize]:
    """Read any supported event file into ``(events, sensor_size)``.

    ``events`` is a 1-D ``EVENT_DTYPE`` array (x, y in pixels, t int64 µs non-decreasing, p 0/1);
    ``sensor_size`` is ``(width, height, polarities)``: the one given, else the file's header, else the
    format's sensor (N-MNIST 34x34, DVS128 128x128), else inferred from the largest coordinates + 1.
    ``format`` (one of :data:`FORMATS`) skips detection (see :func:`detect_format`). ``flip_x=True``
    (``aedat2_dvs128`` only) returns x = 127 - x, the DVS128 as jAER displays it (see
    :func:`read_aedat2_dvs128`).

    Raises ``TypeError`` for a bad ``path`` type, ``FileNotFoundError`` for a missing file and ``ValueError``
    naming the file for an unknown format, a corrupt, truncated or foreign file, an empty stream (unless
    ``allow_empty``), unsorted times (unless ``on_unsorted="sort"``), events outside ``sensor_size`` and
    ``flip_x=True`` for a format other than ``aedat2_dvs128`` (``TypeError`` when ``flip_x`` is not a bool).
    """
    p = check_path(path)
    if format is None:
        format = detect_format(p)
    elif format not in READERS:
        raise ValueError(f"{p}: unknown format {format!r}; known formats: {FORMATS}")
    if not isinstance(flip_x, (bool, np.bool_)):
        raise TypeError(f"{p}: flip_x must be True or False; got {flip_x!r}")
    if flip_x:
        if format != "aedat2_dvs128":
            raise ValueError(
                f"{p}: flip_x mirrors DVS128 AEDAT 2.0 recordings (format 'aedat2_dvs128') as jAER shows them; "
                f"this file is {format!r}"
            )
        return read_aedat2_dvs128(p, sensor_size, on_unsorted=on_unsorted, allow_empty=allow_empty, flip_x=flip_x)
    return READERS[format](p, sensor_size, on_unsorted=on_unsorted, allow_empty=allow_empty)


__all__ = [
    "DVS128_SENSOR",
    "EXTENSIONS",
    "FORMATS",
    "NMNIST_SENSOR",
    "READERS",
    "UNSORTED_POLICIES",
    "detect_format",
    "events_from_fields",
    "events_from_structured",
    "read_aedat2_dvs128",
    "read_aedat4",
    "read_events",
    "read_hdf5_events",
    "read_kaer_td",
    "read_nmnist_bin",
    "read_numpy",
    "read_prophesee_dat",
    "read_prophesee_evt2",
    "read_prophesee_evt3",
    "read_prophesee_header",
    "write_events",
]
