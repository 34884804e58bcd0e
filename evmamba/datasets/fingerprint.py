"""What a dataset holds, summarised for cache keys: samples, labels, classes, sensor size and file stamps.

A token cache is named by a hash of the config *and* of :func:`dataset_fingerprint`, so that relabelling a
row of a labels CSV, dropping a class or deleting, adding or replacing a recording gives a new cache instead
of serving the old tokens. The fingerprint covers, in sample order:

* the source of every sample (its file path or generator id) and its label index;
* the class names and the sensor size (or, for a dataset that infers its size from the files, the fact
  that it does: the files' stamps below then decide it);
* the size in bytes and the modification time (ns) of every file the samples come from -- each source that
  is an existing file, plus the dataset's ``data_files()`` (e.g. the one HDF5 file of SHD).

Reading only file metadata keeps it cheap (one ``stat`` per file). A file rewritten with the same size
within the file system's time resolution would go unnoticed; rebuild with ``--force`` after such edits.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Any

__all__ = ["dataset_fingerprint", "file_stamp"]


def file_stamp(path: str | os.PathLike) -> list[Any] | None:
    """``[path, size in bytes, modification time in ns]`` of an existing file; None otherwise."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, unreadable, or not a path at all (a generator id)
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [str(path), int(st.st_size), int(st.st_mtime_ns)]


def _sensor_part(dataset) -> Any:
    declared = getattr(dataset, "declared_sensor_size", "absent")
    if declared != "absent":  # a dataset that may infer its size from the files (FolderDataset)
        return list(declared) if declared is not None else "inferred from the files"
    return [int(v) for v in dataset.sensor_size]


def dataset_fingerprint(dataset) -> dict[str, Any]:
    """``{"n_samples", "classes", "digest"}`` of an event dataset (see the module docstring).

    ``dataset`` follows the dataset interface (``len``, ``source(i)``, ``classes``, ``sensor_size``, and
    ``labels`` where it has them). ``digest`` is the first 16 hex digits of a SHA-256 over everything the
    fingerprint covers.
    """
    n = len(dataset)
    sources = [str(dataset.source(i)) for i in range(n)]
    labels = getattr(dataset, "labels", None)
    labels = [int(v) for v in labels] if labels is not None else None
    extra = getattr(dataset, "data_files", None)
    files = [str(p) for p in (extra() if callable(extra) else [])]
    stamps = [s for s in (file_stamp(p) for p in dict.fromkeys(sources + files)) if s is not None]
    classes = [str(c) for c in dataset.classes]
    content = {"sources": sources, "labels": labels, "classes": classes, "sensor_size": _sensor_part(dataset),
               "files": stamps}
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return {"n_samples": n, "classes": classes, "digest": hashlib.sha256(blob.encode()).hexdigest()[:16]}
