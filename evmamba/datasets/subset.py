"""A fixed, class-preserving subset of an event dataset (``dataset.max_samples`` in a config)."""

from __future__ import annotations

import numpy as np


class SpreadSubset:
    """``n`` samples of an event dataset spread over all of it: one from each of ``n`` equal stretches.

    The dataset's index range is cut into ``n`` consecutive stretches and one sample is drawn from each
    (a fixed generator, so the subset is always the same). The first ``n`` would lose whole classes of
    datasets listed by class (file names such as ``cl_..``, ``di_..``), and a fixed stride would lose them
    in datasets whose labels cycle (``i % 5``). Keeps ``sensor_size``, ``classes``, ``name``, ``labels`` (of
    the chosen samples, when the base dataset has them) and ``source(i)`` of the base dataset; ``indices``
    holds the chosen positions in the base dataset.
    """

    def __init__(self, base, n: int, source: str = "SpreadSubset"):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{source}: must be an int >= 1; got {n!r}")
        self.base = base
        total = len(base)
        m = min(int(n), total)
        edges = np.arange(m + 1, dtype=np.int64) * total // max(m, 1)
        offsets = np.random.default_rng(0).random(m)
        self.indices = edges[:-1] + (offsets * (edges[1:] - edges[:-1])).astype(np.int64)
        self.classes = base.classes
        self.name = getattr(base, "name", type(base).__name__)

    @property
    def sensor_size(self):
        # A property, so that a base that infers its size on first use (FolderDataset) is not read early.
        return self.base.sensor_size

    @property
    def declared_sensor_size(self):
        """The base's declared sensor size, where it tells one apart from an inferred one (FolderDataset)."""
        if not hasattr(self.base, "declared_sensor_size"):
            raise AttributeError("declared_sensor_size")
        return self.base.declared_sensor_size

    @property
    def labels(self) -> list[int]:
        base_labels = getattr(self.base, "labels", None)
        if base_labels is None:
            raise AttributeError(f"{self.name}: the base dataset has no 'labels'")
        return [int(base_labels[int(i)]) for i in self.indices]

    def data_files(self) -> list:
        """The files the base dataset reads its samples from (see :func:`~.fingerprint.dataset_fingerprint`)."""
        files = getattr(self.base, "data_files", None)
        return list(files()) if callable(files) else []

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int):
        return self.base[int(self.indices[i])]

    def source(self, i: int) -> str:
        return self.base.source(int(self.indices[i]))


__all__ = ["SpreadSubset"]
