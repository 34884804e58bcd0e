"""Atomic file writes: the new content goes to a temporary file beside the target, which is then renamed over
it (``os.replace``, atomic on one file system). A reader sees the old file or the new one, never half of one,
and a crash or an error while writing leaves the old file as it was."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_sibling(path: str | os.PathLike, keep_suffix: bool = False) -> Path:
    """A hidden temporary name in ``path``'s folder (``.NAME.PID.tmp``; with ``keep_suffix`` the target's
    extension is kept at the end, for writers that choose a format by extension)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix if keep_suffix else ''}")


@contextmanager
def replacing(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends without an error, it is renamed over ``path``.

    The parent folder is created. On an error (or an interrupt) the temporary file is removed and ``path``
    is left untouched. ``keep_suffix``: see :func:`temporary_sibling`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path, keep_suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; with ``fsync`` the bytes reach the disk before the rename."""
    path = Path(path)
    with replacing(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


__all__ = ["replacing", "temporary_sibling", "write_bytes_atomic", "write_text_atomic"]
