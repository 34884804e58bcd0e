"""Events stored as arrays: ``.npy``, ``.npz`` and HDF5, and :func:`write_events` for the same three.

Accepted layouts (fields may come in any order and any integer or bool dtype; they are converted to
``EVENT_DTYPE`` with range checks):

* ``.npy`` -- one structured array with fields ``x, y, t, p``;
* ``.npz`` -- an ``events`` structured array, or separate ``x``, ``y``, ``t``, ``p`` arrays, or a single
  structured array under any name; an optional ``sensor_size`` array of three ints;
* HDF5 -- a compound dataset ``events`` (or the one named by ``key``), or a group holding ``x``, ``y``,
  ``t``, ``p`` datasets (``events/x``, ... as in DSEC), or those four at the root; the sensor size from a
  ``sensor_size`` attribute (three ints) or ``width``/``height`` attributes on the dataset, group or file.

``t`` must be integer microseconds: float times are refused rather than guessed (seconds? ms?).
Polarity may be bool, 0/1 or -1/+1 (-1 is taken as OFF = 0). Without a stored or given sensor size, it is
inferred as (max x + 1, max y + 1, max p + 1). ``.npy`` cannot store a sensor size.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from evmamba.core.events import EVENT_DTYPE, SensorSize, check_sensor_size
from evmamba.core.files import replacing
from evmamba.pipeline.events import validate_events

from .common import check_path, check_policy, finish_events, pack_events, resolve_sensor_size

_FIELDS = ("x", "y", "t", "p")
_UINT16_MAX = np.iinfo(np.uint16).max


def _check_integer_field(values: np.ndarray, field: str, source: str) -> np.ndarray:
    if values.dtype.kind not in "iub":
        hint = " (timestamps must be integer µs, e.g. np.rint(t_seconds * 1e6))" if field == "t" else ""
        raise TypeError(f"{source}: field '{field}' has dtype {values.dtype}; an integer dtype is expected{hint}")
    return values


def events_from_fields(x, y, t, p, source: str) -> np.ndarray:
    """Four integer (or bool) arrays as an ``EVENT_DTYPE`` array, range-checked.

    Raises ``TypeError`` for a non-integer dtype and ``ValueError`` for unequal lengths, coordinates
    outside ``0..65535``, negative times, times beyond int64 or polarities other than 0/1 (or -1/+1),
    each naming ``source`` and the field.
    """
    arrays = {"x": np.asarray(x), "y": np.asarray(y), "t": np.asarray(t), "p": np.asarray(p)}
    for field, values in arrays.items():
        _check_integer_field(values, field, source)
        if values.ndim != 1:
            raise ValueError(f"{source}: field '{field}' must be one-dimensional; got shape {values.shape}")
    lengths = {field: len(v) for field, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{source}: fields have different lengths {lengths}")
    if lengths["t"] == 0:
        return pack_events([], [], [], [])
    for field in ("x", "y"):
        v = arrays[field]
        lo, hi = int(v.min()), int(v.max())
        if lo < 0 or hi > _UINT16_MAX:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{source}: field '{field}' has value {bad}, outside 0..{_UINT16_MAX}")
    t = arrays["t"]
    if t.dtype.kind == "u" and int(t.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{source}: field 't' has value {int(t.max())}, beyond the int64 range")
    if t.dtype.kind != "b" and int(t.min()) < 0:
        raise ValueError(f"{source}: field 't' has a negative timestamp {int(t.min())} (µs)")
    pol = arrays["p"]
    if pol.dtype.kind == "b":
        pol = pol.astype(np.uint8)
    else:
        lo, hi = int(pol.min()), int(pol.max())
        if lo == -1 and hi <= 1 and not (pol == 0).any():
            pol = (pol > 0).astype(np.uint8)  # the -1/+1 convention
        elif lo < 0 or hi > 1:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{source}: field 'p' has value {bad}; polarity must be 0/1 (or -1/+1, or bool)")
    return pack_events(arrays["x"], arrays["y"], t, pol)


def events_from_structured(arr: np.ndarray, source: str) -> np.ndarray:
    """A structured array with fields ``x, y, t, p`` (any integer dtypes) as ``EVENT_DTYPE``.

    Raises ``TypeError`` when ``arr`` is not a structured array or misses a field, and the errors of
    :func:`events_from_fields` otherwise.
    """
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None:
        got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
        raise TypeError(f"{source}: expected a structured array with fields {_FIELDS}; got {got}")
    missing = [f for f in _FIELDS if f not in arr.dtype.names]
    if missing:
        raise TypeError(f"{source}: structured array lacks field(s) {missing}; it has {list(arr.dtype.names)}")
    if arr.dtype == EVENT_DTYPE and arr.ndim == 1:
        return arr
    if arr.ndim != 1:
        raise ValueError(f"{source}: events must be one-dimensional; got shape {arr.shape}")
    return events_from_fields(arr["x"], arr["y"], arr["t"], arr["p"], source)


def _stored_sensor_size(value, source: str) -> SensorSize:
    return check_sensor_size(np.asarray(value).ravel().tolist(), f"{source}: stored sensor_size")


def read_numpy(
    path,
    sensor_size=None,
    *,
    on_unsorted: str = "error",
    allow_empty: bool = False,
) -> tuple[np.ndarray, SensorSize]:
    """Read events from a ``.npy`` or ``.npz`` file (layouts in the module docstring).

    Returns ``(events, sensor_size)``: ``sensor_size`` if given, else the one stored in the ``.npz``, else
    inferred. Raises ``ValueError`` naming the file when it is not a NumPy file or holds no usable events,
    ``TypeError`` for wrong dtypes, and ``ValueError`` for unsorted times (see ``on_unsorted``) or events
    outside the sensor.
    """
    p = check_path(path)
    source = str(p)
    check_policy(on_unsorted, source)
    try:
        loaded = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{source}: not a readable .npy/.npz file ({exc})") from None
    stored = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            try:
                arrays = {name: loaded[name] for name in loaded.files}
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise ValueError(f"{source}: corrupt .npz file ({exc})") from None
        if "sensor_size" in arrays:
            stored = _stored_sensor_size(arrays.pop("sensor_size"), source)
        if "events" in arrays:
            events = events_from_structured(arrays["events"], f"{source}[events]")
        elif set(_FIELDS) <= arrays.keys():
            events = events_from_fields(*(arrays[f] for f in _FIELDS), source)
        elif len(arrays) == 1:
            (name, only), = arrays.items()
            events = events_from_structured(only, f"{source}[{name}]")
        else:
            raise ValueError(
                f"{source}: expected an 'events' array or 'x','y','t','p' arrays; found {sorted(arrays)}"
            )
    else:
        events = events_from_structured(loaded, source)
    size = resolve_sensor_size(events, sensor_size, stored, source, polarities=None)
    return finish_events(events, size, source, on_unsorted, allow_empty), size


def _h5_sensor_size(objects, source: str) -> SensorSize | None:
    for obj in objects:
        attrs = obj.attrs
        if "sensor_size" in attrs:
            return _stored_sensor_size(attrs["sensor_size"], source)
        if "width" in attrs and "height" in attrs:
            return check_sensor_size((int(attrs["width"]), int(attrs["height"]), 2), f"{source}: stored width/height")
    return None


def read_hdf5_events(
    path,
    sensor_size=None,
    *,
    key: str | None = None,
    on_unsorted: str = "error",
    allow_empty: bool = False,
) -> tuple[np.ndarray, SensorSize]:
    """Read events from an HDF5 file (layouts in the module docstring); ``key`` names the dataset or group.

    Returns ``(events, sensor_size)``. Raises ``ValueError`` naming the file when it is not HDF5, ``key`` is
    missing or no event layout is found (the message lists what the file holds), ``TypeError`` for wrong
    dtypes, and ``ValueError`` for unsorted times (see ``on_unsorted``) or events outside the sensor.
    """
    import h5py  # deferred: importing h5py costs ~0.5 s

    p = check_path(path)
    source = str(p)
    check_policy(on_unsorted, source)
    try:
        fh = h5py.File(p, "r")
    except OSError as exc:
        raise ValueError(f"{source}: not a readable HDF5 file ({exc})") from None
    with fh:
        if key is not None:
            if key not in fh:
                raise ValueError(f"{source}: no dataset or group {key!r}; the file holds {sorted(fh.keys())}")
            obj = fh[key]
        elif "events" in fh:
            obj = fh["events"]
        else:
            obj = fh
        where = f"{source}[{obj.name}]"
        if isinstance(obj, h5py.Dataset):
            if obj.dtype.names is None:
                raise TypeError(f"{where}: expected a compound dataset with fields {_FIELDS}; got dtype {obj.dtype}")
            events = events_from_structured(obj[()], where)
        elif all(f in obj and isinstance(obj[f], h5py.Dataset) for f in _FIELDS):
            events = events_from_fields(*(obj[f][()] for f in _FIELDS), where)
        else:
            raise ValueError(
                f"{where}: no events found: expected a compound 'events' dataset or 'x','y','t','p' datasets; "
                f"it holds {sorted(obj.keys())}"
            )
        stored = _h5_sensor_size([obj, fh] if obj is not fh else [fh], source)
    size = resolve_sensor_size(events, sensor_size, stored, source, polarities=None)
    return finish_events(events, size, source, on_unsorted, allow_empty), size


_WRITABLE = (".npy", ".npz", ".h5", ".hdf5")


def write_events(path, events: np.ndarray, sensor_size=None, *, compress: bool = False) -> Path:
    """Write an ``EVENT_DTYPE`` array to ``.npy``, ``.npz`` or ``.h5``/``.hdf5``, atomically.

    ``.npz`` and HDF5 also store ``sensor_size`` (when given) so that :func:`read_numpy` /
    :func:`read_hdf5_events` return it; ``.npy`` stores the events only. ``compress`` uses zip deflate for
    ``.npz`` and gzip for HDF5. Returns the written path.

    Raises ``TypeError`` for a path that is not a string or path or events of another dtype, and
    ``ValueError`` for an unknown suffix or events that fail :func:`~evmamba.pipeline.events.validate_events`.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    out = Path(path).expanduser()
    suffix = out.suffix.lower()
    if suffix not in _WRITABLE:
        raise ValueError(f"{out}: cannot write events to a {suffix or 'suffix-less'} file; use one of {_WRITABLE}")
    size = None if sensor_size is None else check_sensor_size(sensor_size, f"{out}: sensor_size")
    validate_events(events, size, source=f"events for {out}")
    with replacing(out) as tmp:
        if suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(tmp, "w") as fh:
                ds = fh.create_dataset("events", data=events, compression="gzip" if compress else None)
                if size is not None:
                    ds.attrs["sensor_size"] = np.asarray(size, dtype=np.int64)
        else:
            with open(tmp, "wb") as fh:  # a file object keeps numpy from appending its own suffix
                if suffix == ".npy":
                    np.save(fh, events, allow_pickle=False)
                else:
                    arrays = {"events": events}
                    if size is not None:
                        arrays["sensor_size"] = np.asarray(size, dtype=np.int64)
                    (np.savez_compressed if compress else np.savez)(fh, **arrays)
    return out
