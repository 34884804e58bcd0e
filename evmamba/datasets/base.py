"""The dataset interface every evmamba dataset follows, and a base for datasets made of event files.

A dataset is a :class:`~collections.abc.Sequence` of ``(events, label)`` pairs: ``events`` is a 1-D
``EVENT_DTYPE`` array (x, y in pixels, t int64 µs sorted, p 0/1), ``label`` an ``int`` index into
``classes``. It also tells its ``sensor_size`` ``(width, height, polarities)``, its ``name`` and, through
``source(i)``, where sample ``i`` comes from (a path or an id, for error messages).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evmamba.core.events import SensorSize

from ..pipeline.readers import read_events
from ..pipeline.readers.common import check_policy


class EventDataset(Sequence):
    """Base class: subclasses set ``name``, ``sensor_size``, ``classes`` and ``labels`` and implement
    :meth:`_load` (and :meth:`source` when the default ``"<name>[i]"`` is not informative)."""

    name: str = "events"
    sensor_size: SensorSize
    classes: list[str]
    #: Label index of every sample, known without reading the recordings (``len(labels) == len(self)``).
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def _index(self, index) -> int:
        """``index`` as a non-negative int; ``TypeError`` for non-integers, ``IndexError`` out of range."""
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(f"{self.name}: sample index must be an integer; got {type(index).__name__}") from None
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.name}: sample index {index} out of range for {n} samples")
        return i

    def __getitem__(self, index) -> tuple[np.ndarray, int]:
        i = self._index(index)
        return self._load(i), int(self.labels[i])

    def _load(self, i: int) -> np.ndarray:
        """The events of sample ``i`` (already range-checked)."""
        raise NotImplementedError

    def source(self, index) -> str:
        """Where sample ``index`` comes from (a file path or an id), for messages."""
        return f"{self.name}[{self._index(index)}]"

    def data_files(self) -> list[Path]:
        """Files the samples are read from that are not themselves a sample's :meth:`source` (e.g. one HDF5
        file holding every sample); their sizes and times enter the token cache's key."""
        return []

    def class_counts(self) -> np.ndarray:
        """Number of samples per class, shape ``(len(classes),)``, from the labels alone."""
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.classes))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, samples={len(self)}, classes={len(self.classes)}, "
            f"sensor_size={self.sensor_size})"
        )


class EventFileDataset(EventDataset):
    """A dataset whose samples are event files read with :func:`~evmamba.pipeline.readers.read_events`.

    ``paths`` and ``labels`` are parallel lists; ``format`` (``None``: detected per file) and
    ``on_unsorted`` are passed to the reader, and every sample is checked against ``sensor_size``.
    """

    def __init__(
        self,
        name: str,
        paths: Sequence[Path],
        labels: Sequence[int],
        classes: Sequence[str],
        sensor_size: SensorSize,
        format: str | None = None,
        on_unsorted: str = "error",
    ) -> None:
        self.name = name
        self.paths = [Path(p) for p in paths]
        self.labels = [int(v) for v in labels]
        self.classes = list(classes)
        # None only for subclasses that infer the size on first use (FolderDataset).
        self.sensor_size = None if sensor_size is None else tuple(sensor_size)
        self.format = format
        self.on_unsorted = check_policy(on_unsorted, name)

    def _load(self, i: int) -> np.ndarray:
        events, _ = read_events(self.paths[i], self.sensor_size, self.format, on_unsorted=self.on_unsorted)
        return events

    def source(self, index) -> str:
        return str(self.paths[self._index(index)])
