"""tonic's public datasets, returning ``EVENT_DTYPE`` events, and never downloading what is already there.

Each wrapper keeps tonic's folder layout, ``<root>/<tonic class name>/...`` (``root`` defaults to
:func:`~evmamba.datasets.paths.data_root`), so a folder prepared by tonic works unchanged.

tonic 1.7 decides whether to download by looking for the *archive* and counting extracted files, so a folder
whose archive was deleted after extraction, or that holds a subset, would be downloaded again. Here the
extracted files alone decide: when they are present tonic's check and download are skipped. When they are
missing, tonic's own download-and-extract runs (with ``download=True``); if that fails -- there is no
network, or tonic has no URL (POKER-DVS) -- :class:`DatasetFilesMissingError` lists the exact archive and
extracted files to place, and where.

SHD and SSC are read directly from their HDF5 file, which is opened once per process (lazily, on the
first sample a DataLoader worker asks for) instead of once per sample as tonic does. Their spike times are
stored in seconds; they are converted to integer µs (rounded), with x = channel, y = 0, p = 0.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import ClassVar

import numpy as np

from evmamba.core.events import check_sensor_size

from ..pipeline.readers.arrays import events_from_fields, events_from_structured
from ..pipeline.readers.common import check_policy, finish_events
from .base import EventDataset
from .local import DVSGESTURE_CLASSES, NMNIST_CLASSES, POKER_CLASSES
from .paths import data_root
from .splits import stratified_holdout


class DatasetFilesMissingError(FileNotFoundError):
    """A dataset's files are not on disk and could not be downloaded; the message says what to place where."""


def _offline(tonic_cls):
    """A subclass of a tonic dataset that trusts the files on disk: no existence check, no download."""

    def refuse_download(self):
        raise DatasetFilesMissingError(f"{self.location_on_system}: refusing to download inside an offline dataset")

    # Same class name, so tonic's folder (save_to/<class name>) is unchanged.
    return type(tonic_cls.__name__, (tonic_cls,), {"_check_exists": lambda self: True, "download": refuse_download})


class _TonicBacked(EventDataset):
    """Shared machinery: the split check, the file-presence check, the download attempt and its error."""

    tonic_name: ClassVar[str]  # class name in tonic.datasets, also the folder name under root
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def __init__(self, split: str, root=None, download: bool = True, on_unsorted: str = "error") -> None:
        self.name = type(self).__name__
        if split not in self.splits:
            raise ValueError(f"{self.name}: split must be one of {self.splits}; got {split!r}")
        self.split = split
        self.root = Path(root).expanduser() if root is not None else data_root()
        self.location = self.root / self.tonic_name
        self.on_unsorted = check_policy(on_unsorted, self.name)
        if not self._extracted_present():
            reason = "download=False"
            if download:
                try:
                    self._fetch()
                except Exception as exc:  # tonic raises URLError, OSError, RuntimeError, ... on a failed fetch
                    reason = f"download failed: {type(exc).__name__}: {exc}"
                    raise DatasetFilesMissingError(self._missing_message(reason)) from exc
                reason = "the download did not produce them"
            if not self._extracted_present():
                raise DatasetFilesMissingError(self._missing_message(reason))

    # -- what must be on disk ---------------------------------------------------------------------------
    def _archives(self) -> list[tuple[str, str | None, str | None]]:
        """``(file name, url, md5)`` of the archives tonic downloads for this split, from tonic's class."""
        cls = self._tonic_class()
        prefix = self.split  # tonic names its per-split attributes train_filename, test_url, ...
        filename = getattr(cls, f"{prefix}_filename", None) or getattr(cls, "filename", None)
        url = getattr(cls, f"{prefix}_url", None) or getattr(cls, "url", None)
        md5 = getattr(cls, f"{prefix}_md5", None) or getattr(cls, "file_md5", None)
        return [(filename, url, md5)]

    def _extracted_layout(self) -> str:
        """The extracted sample files of this split, relative to ``location``, ``<...>`` marking a name part."""
        raise NotImplementedError

    def _extracted_pattern(self) -> str:
        return re.sub(r"<[^>]*>", "*", self._extracted_layout())

    def _extracted_present(self) -> bool:
        return self.location.is_dir() and next(self.location.glob(self._extracted_pattern()), None) is not None

    def _missing_message(self, reason: str) -> str:
        lines = [
            f"{self.name} (split {self.split!r}): the data is not in {self.location} ({reason}). Place either"
        ]
        for filename, url, md5 in self._archives():
            origin = f" from {url}" if url else ""
            check = f"md5 {md5}" if md5 else "no checksum"
            lines.append(f"  - the archive {self.location / filename} ({check}{origin}; extracted on first use), or")
        lines.append(f"  - the extracted files {self.location / self._extracted_layout()}")
        lines.append(f"then run again; root= (dataset.root in a config) is the folder that holds {self.tonic_name}/.")
        return "\n".join(lines)

    # -- tonic --------------------------------------------------------------------------------------------
    def _tonic_class(self):
        import tonic.datasets  # deferred: importing tonic takes seconds

        return getattr(tonic.datasets, self.tonic_name)

    def _tonic_kwargs(self) -> dict:
        return {"train": self.split == "train"}

    def _fetch(self) -> None:
        """Let tonic download and extract (its own check decides what is missing)."""
        self._tonic_class()(save_to=str(self.root), **self._tonic_kwargs())

    def _finish(self, events: np.ndarray, source: str) -> np.ndarray:
        return finish_events(events, self.sensor_size, source, self.on_unsorted, False)


class _TonicFileDataset(_TonicBacked):
    """A tonic dataset read through tonic's own class (offline), one file or array per sample."""

    classes: list[str]

    def __init__(self, split: str, root=None, download: bool = True, on_unsorted: str = "error") -> None:
        super().__init__(split, root, download, on_unsorted)
        self._tonic = _offline(self._tonic_class())(save_to=str(self.root), **self._tonic_kwargs())
        self._select(list(range(len(self._tonic.data))), [self._label(t) for t in self._tonic.targets])

    def _label(self, target) -> int:
        return int(target)

    def _select(self, indices: list[int], labels: list[int]) -> None:
        self._indices = indices
        self.labels = labels

    def _load(self, i: int) -> np.ndarray:
        raw, _ = self._tonic[self._indices[i]]
        source = self.source(i)
        return self._finish(events_from_structured(np.asarray(raw), source), source)

    def source(self, index) -> str:
        item = self._tonic.data[self._indices[self._index(index)]]
        return item if isinstance(item, str) else f"{self.location} sample {self._indices[self._index(index)]}"


class TonicNMNIST(_TonicFileDataset):
    """N-MNIST (60000 train / 10000 test ``.bin`` files), classes ``"0"``..``"9"``, sensor (34, 34, 2)."""

    tonic_name = "NMNIST"
    classes = NMNIST_CLASSES
    sensor_size = (34, 34, 2)

    def _extracted_layout(self) -> str:
        return f"{'Train' if self.split == 'train' else 'Test'}/<digit 0-9>/<sample>.bin"


class TonicDVSGesture(_TonicFileDataset):
    """IBM DVS128 Gesture as tonic prepares it (one ``.npy`` per gesture, ms resolution), 11 classes."""

    tonic_name = "DVSGesture"
    classes = DVSGESTURE_CLASSES
    sensor_size = (128, 128, 2)

    def _extracted_layout(self) -> str:
        folder = "ibmGestureTrain" if self.split == "train" else "ibmGestureTest"
        return f"{folder}/user<NN>_<lighting>/<class 0-10>.npy"


class TonicPokerDVS(_TonicFileDataset):
    """tonic's POKER-DVS split (``pips_train`` / ``pips_test`` folders of ``.npy``), sensor (35, 35, 2).

    tonic 1.7 has no download URL for it: it copies ``pips_*.tar.gz`` from its own package folder when a
    tonic release ships them. The staged ``.aedat`` recordings are read by
    :class:`~evmamba.datasets.local.PokerDVS` instead.
    """

    tonic_name = "POKERDVS"
    classes = POKER_CLASSES  # tonic's order cl, he, di, sp
    sensor_size = (35, 35, 2)

    def _extracted_layout(self) -> str:
        return f"{'pips_train' if self.split == 'train' else 'pips_test'}/<cl|he|di|sp>/<sample>.npy"

    def _fetch(self) -> None:
        from tonic.download_utils import extract_archive

        archive = self.location / self._archives()[0][0]
        if archive.is_file():  # tonic only looks inside its package folder; honour one placed here
            extract_archive(str(archive), str(self.location))
        else:
            super()._fetch()


class _HeldOutSplit(_TonicFileDataset):
    """A tonic dataset without an official split: ``"all"``, or a stratified train/test hold-out."""

    splits = ("all", "train", "test")

    def __init__(
        self,
        split: str = "all",
        root=None,
        download: bool = True,
        on_unsorted: str = "error",
        test_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.test_fraction = test_fraction
        self.seed = seed
        super().__init__(split, root, download, on_unsorted)

    def _tonic_kwargs(self) -> dict:
        return {}

    def _archives(self):
        cls = self._tonic_class()
        return [(cls.filename, cls.url, cls.file_md5)]

    def _select(self, indices: list[int], labels: list[int]) -> None:
        if self.split != "all":
            keys = [os.path.relpath(self._tonic.data[i], self.location) for i in indices]
            test = stratified_holdout(keys, labels, self.test_fraction, self.seed)
            keep = test if self.split == "test" else ~test
            indices = [i for i, k in zip(indices, keep) if k]
            labels = [lab for lab, k in zip(labels, keep) if k]
        super()._select(indices, labels)


class TonicCIFAR10DVS(_HeldOutSplit):
    """CIFAR10-DVS (10000 AEDAT 4 recordings, 10 classes, sensor (128, 128, 2)).

    tonic has no train/test split: ``split="train"``/``"test"`` hold out ``test_fraction`` of every class,
    chosen by ``seed`` (:func:`~evmamba.datasets.splits.stratified_holdout`).
    """

    tonic_name = "CIFAR10DVS"
    sensor_size = (128, 128, 2)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def _extracted_layout(self) -> str:
        return "<class name>/<sample>.aedat4"


class TonicNCaltech101(_HeldOutSplit):
    """N-Caltech101 (``.bin`` per sample; tonic shifts each sample to start at x = y = 0).

    Classes are the sorted folder names. The recordings are saccades over images scaled to fit 240x180, so
    the default ``sensor_size`` is (240, 180, 2); a sample outside it raises ``ValueError`` naming the file.
    Splits as in :class:`TonicCIFAR10DVS`.
    """

    tonic_name = "NCALTECH101"

    def __init__(
        self,
        split: str = "all",
        root=None,
        download: bool = True,
        on_unsorted: str = "error",
        test_fraction: float = 0.1,
        seed: int = 0,
        sensor_size=(240, 180, 2),
    ) -> None:
        self.sensor_size = check_sensor_size(sensor_size, "TonicNCaltech101")
        self.classes = []
        super().__init__(split, root, download, on_unsorted, test_fraction, seed)

    def _extracted_layout(self) -> str:
        return "Caltech101/<class name>/<sample>.bin"

    def _fetch(self) -> None:
        super()._fetch()
        inner = self.location / "Caltech101.zip"  # the download holds a second archive tonic leaves packed
        if inner.is_file() and not self._extracted_present():
            from tonic.download_utils import extract_archive

            extract_archive(str(inner), str(self.location))

    def _label(self, target) -> int:
        if not self.classes:
            self.classes = sorted(set(self._tonic.targets))
        return self.classes.index(target)


class _HeidelbergSpikes(_TonicBacked):
    """SHD / SSC read from their HDF5 file with one handle per process (see the module docstring)."""

    sensor_size = (700, 1, 1)

    def __init__(self, split: str, root=None, download: bool = True, on_unsorted: str = "error") -> None:
        super().__init__(split, root, download, on_unsorted)
        import h5py

        self.path = self.location / self._data_filename()
        try:
            with h5py.File(self.path, "r") as fh:
                for key in ("spikes/times", "spikes/units", "labels"):
                    if key not in fh:
                        raise ValueError(f"{self.path}: missing dataset {key!r}; not an SHD/SSC file")
                self.labels = [int(v) for v in fh["labels"][()]]
                if len(fh["spikes/times"]) != len(self.labels) or len(fh["spikes/units"]) != len(self.labels):
                    raise ValueError(f"{self.path}: spikes/times, spikes/units and labels differ in length")
                if "extra/keys" in fh:
                    keys = fh["extra/keys"][()]
                    self.classes = [k.decode() if isinstance(k, bytes) else str(k) for k in keys]
                else:
                    self.classes = [str(i) for i in range(max(self.labels) + 1)]
        except OSError as exc:
            raise ValueError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        self._h5 = None
        self._h5_pid = None

    def _data_filename(self) -> str:
        return f"{self.tonic_name.lower()}_{self.split}.h5"  # tonic's name for the extracted file

    def _extracted_layout(self) -> str:
        return self._data_filename()

    def _archives(self):
        cls = self._tonic_class()
        archive = getattr(cls, f"{self.split}_zip")
        return [(archive, cls.base_url + archive, getattr(cls, f"{self.split}_md5", None))]

    def _file(self):
        """The open HDF5 file of this process (opened on first use, and again after a fork)."""
        pid = os.getpid()
        if self._h5 is None or self._h5_pid != pid:
            import h5py

            self._h5 = h5py.File(self.path, "r")
            self._h5_pid = pid
        return self._h5

    def _load(self, i: int) -> np.ndarray:
        fh = self._file()
        times = np.asarray(fh["spikes/times"][i], dtype=np.float64)
        units = np.asarray(fh["spikes/units"][i])
        source = self.source(i)
        if not np.isfinite(times).all():
            raise ValueError(f"{source}: field 't' has a non-finite spike time")
        t_us = np.rint(times * 1e6).astype(np.int64)  # seconds -> µs
        zeros = np.zeros(len(t_us), dtype=np.uint8)
        events = events_from_fields(units.astype(np.int64), zeros, t_us, zeros, source)
        return self._finish(events, source)

    def source(self, index) -> str:
        return f"{self.path}[{self._index(index)}]"

    def data_files(self) -> list[Path]:
        return [Path(self.path)]

    def close(self) -> None:
        """Close this process's HDF5 handle (it is reopened on the next sample)."""
        if self._h5 is not None and self._h5_pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._h5_pid = None

    def __getstate__(self):
        # An open h5py handle cannot be pickled (DataLoader workers with spawn); each process reopens it.
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_h5_pid"] = None
        return state


class TonicSHD(_HeidelbergSpikes):
    """Spiking Heidelberg Digits (``SHD/shd_{train,test}.h5``): 20 classes, 700 channels."""

    tonic_name = "SHD"


class TonicSSC(_HeidelbergSpikes):
    """Spiking Speech Commands (``SSC/ssc_{train,valid,test}.h5``): 35 classes, 700 channels."""

    tonic_name = "SSC"
    splits = ("train", "valid", "test")

    def _tonic_kwargs(self) -> dict:
        return {"split": self.split}


__all__ = [
    "DatasetFilesMissingError",
    "TonicCIFAR10DVS",
    "TonicDVSGesture",
    "TonicNCaltech101",
    "TonicNMNIST",
    "TonicPokerDVS",
    "TonicSHD",
    "TonicSSC",
]
