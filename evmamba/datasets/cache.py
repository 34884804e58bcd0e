"""Preprocessed token files: one HDF5 file per dataset split, named by a hash of what produced it.

A cache file ``<cache_dir>/<dataset name>-<split>-<hash>.h5`` holds the binned tokens of every sample of
one split, ragged, as concatenated arrays:

==============  ================  =========================================================================
dataset         shape, dtype      meaning
==============  ================  =========================================================================
``tokens``      (T,) int32        token ids of all samples, end to end
``counts``      (T,) int32        events merged into each token
``dt``          (T,) float32      gap to the previous token of the same sample (binning ``time_unit``)
``t``           (T,) int64        time of each token's first event, µs
``offsets``     (n + 1,) int64    sample i owns ``[offsets[i], offsets[i + 1])``; offsets[0] = 0
``labels``      (n,) int64        class index of each sample
``n_events``    (n,) int64        events in the sample before binning
``source``      (n,) str          where each sample came from (file name or generator id)
==============  ================  =========================================================================

Attributes: ``format`` ("evmamba-tokens"), ``format_version``, ``config`` (JSON of the hashed dataset and
binning sections and of the data's fingerprint), ``config_hash``, ``dataset``, ``split``, ``sensor_size``,
``vocab_size``, ``classes`` (JSON list), ``n_samples``, ``n_done`` (samples written so far), ``n_empty`` and
``complete``, which is set last. The hash covers what decides the file's content: the resolved ``dataset``
and ``binning`` sections, the format version and the data themselves -- every sample's source and label, the
class names, the sensor size and the size and modification time of every recording
(:func:`~evmamba.datasets.fingerprint.dataset_fingerprint`). A changed config, a relabelled, added,
removed or replaced recording therefore gives a new file and never serves stale tokens. ``force``
rebuilds a file regardless (after an edit that keeps a file's size and time stamp).

Empty samples (no event left after the binning's crops and filters) are **kept** with length 0, so sample
``i`` of a cache is always sample ``i`` of the dataset, with its label and source; their number is the
``n_empty`` attribute. :class:`TokenCache` can skip them (``drop_empty=True``) for training, where a
sequence without tokens carries no information.

Writing is atomic and resumable: samples are binned in blocks (in worker processes when ``workers > 1``),
each finished block is appended to ``<name>.h5.partial`` and flushed, and the finished file is renamed into
place. A run that stops part-way leaves the partial file; the next run with the same config continues after
its last complete block.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..core.events import check_sensor_size
from ..pipeline.binning import BinningConfig, TokenSequence, bin_events, vocab_size
from .fingerprint import dataset_fingerprint
from .subset import SpreadSubset

__all__ = [
    "BYTES_PER_TOKEN",
    "FORMAT",
    "FORMAT_VERSION",
    "IN_MEMORY_MAX_BYTES",
    "SpreadSubset",
    "TokenCache",
    "build_cache",
    "cache_key",
    "cache_path",
    "dataset_from_config",
    "ensure_cache",
    "inspect_cache",
    "update_cache",
    "write_cache",
]

FORMAT = "evmamba-tokens"
FORMAT_VERSION = 1
#: Bumped whenever a reader decodes the same file differently (2: EVT 3.0 timestamps per the specification), so
#: that caches built from the old decoding are never served.
DECODER_VERSION = 2
_ARRAYS = {"tokens": np.int32, "counts": np.int32, "dt": np.float32, "t": np.int64}
_PER_SAMPLE = {"labels": np.int64, "n_events": np.int64}
_CHUNK = 1 << 16  # HDF5 chunk length of the token arrays (elements)
#: Bytes of the token arrays per token (tokens, counts, dt, t).
BYTES_PER_TOKEN = sum(np.dtype(dt).itemsize for dt in _ARRAYS.values())
#: :class:`TokenCache` loads token arrays of at most this many bytes whole, and reads larger ones per sample.
IN_MEMORY_MAX_BYTES = 1 << 30
_ATTRS = (
    "config", "config_hash", "dataset", "split", "sensor_size", "vocab_size", "classes",
    "n_samples", "n_done", "n_empty", "complete",
)


#: ``make_dataset(dataset_section, split) -> dataset``: replaces the registry's constructor (tests, custom data).
DatasetFactory = Callable[[Mapping, str], Any]


# -- names and keys ---------------------------------------------------------------------------------------


def _plain(section: Any, what: str) -> dict[str, Any]:
    """A plain dict copy of a config section (an OmegaConf node or a mapping)."""
    if hasattr(section, "_metadata") and hasattr(section, "_get_node"):
        from omegaconf import OmegaConf

        section = OmegaConf.to_container(section, resolve=True)
    if not isinstance(section, Mapping):
        raise ValueError(f"config: section '{what}' must be a mapping; got {type(section).__name__}")
    return json.loads(json.dumps(dict(section), sort_keys=True))


def _sections(cfg: Mapping) -> tuple[dict[str, Any], BinningConfig]:
    """The resolved ``dataset`` section (must name the dataset) and the ``binning`` section as a config."""
    if "dataset" not in cfg:
        raise ValueError("config: missing section 'dataset' (with at least 'name')")
    dataset = _plain(cfg["dataset"], "dataset")
    name = dataset.get("name")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0"):
        raise ValueError(f"config: key 'dataset.name' must be a plain name; got {name!r}")
    binning = BinningConfig.from_dict(_plain(cfg.get("binning") or {}, "binning"), source="config: section 'binning'")
    return dataset, binning


def cache_key(cfg: Mapping, dataset=None) -> tuple[str, dict[str, Any]]:
    """``(hash, hashed_content)`` for a config with ``dataset`` and ``binning`` sections and, when given, the
    event dataset the section gives for one split.

    The content is ``{"format_version", "decoder_version", "dataset", "binning", "data"}``: the binning section
    completed with its defaults (so spelling a default out does not change the hash) and ``data`` the dataset's
    :func:`~evmamba.datasets.fingerprint.dataset_fingerprint` (samples, labels, classes, sensor size, file
    sizes and times; ``None`` without a dataset). The hash is the first 16 hex digits of the SHA-256 of its
    canonical JSON. Other sections (``model``, ``train``, ``cache_dir``) do not count.
    """
    section, binning = _sections(cfg)
    data = dataset_fingerprint(dataset) if dataset is not None else None
    content = {"format_version": FORMAT_VERSION, "decoder_version": DECODER_VERSION, "dataset": section,
               "binning": binning.to_dict(), "data": data}
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16], content


def cache_path(
    cfg: Mapping,
    split: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    dataset=None,
    make_dataset: DatasetFactory | None = None,
) -> Path:
    """``<cache_dir>/<dataset name>-<split>-<hash>.h5``; ``cache_dir`` defaults to the config's ``cache_dir``
    (itself ``cache``, relative to the working directory). The hash is :func:`cache_key` of the config and
    of ``dataset`` -- by default the split's dataset, built from the config by
    :func:`~evmamba.datasets.registry.build_dataset` (with ``make_dataset``, if given)."""
    if not isinstance(split, str) or not split or any(c in split for c in "/\\\0"):
        raise ValueError(f"cache_path: argument 'split' must be a plain name; got {split!r}")
    if dataset is None:
        dataset = dataset_from_config(_sections(cfg)[0], split, make_dataset)
    key, content = cache_key(cfg, dataset)
    return _file_name(cfg, split, cache_dir, key, content)


def _file_name(cfg: Mapping, split: str, cache_dir, key: str, content: dict) -> Path:
    folder = Path(cache_dir if cache_dir is not None else (cfg.get("cache_dir") or "cache"))
    return folder / f"{content['dataset']['name']}-{split}-{key}.h5"


# -- reading ----------------------------------------------------------------------------------------------


def _attr_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _open_h5(path: Path, mode: str = "r", **options) -> h5py.File:
    try:
        return h5py.File(path, mode, **options)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such token cache file") from None
        raise ValueError(
            f"{path}: not a readable HDF5 file ({path.stat().st_size} bytes; truncated, corrupted or not HDF5): "
            f"{exc}"
        ) from None


def _check_layout(f: h5py.File, path: Path, expected_hash: str | None, need_complete: bool) -> dict[str, Any]:
    """Validate a token cache's attributes and array shapes; return its attributes as plain values."""
    try:
        return _check_layout_unguarded(f, path, expected_hash, need_complete)
    except OSError as exc:  # damage inside the file, found while reading offsets
        raise ValueError(f"{path}: damaged token cache: {exc}") from None


def _check_layout_unguarded(
    f: h5py.File, path: Path, expected_hash: str | None, need_complete: bool
) -> dict[str, Any]:
    a = f.attrs
    fmt = _attr_str(a.get("format", ""))
    if fmt != FORMAT:
        raise ValueError(
            f"{path}: not an evmamba token cache (attribute 'format' is {fmt!r}, expected {FORMAT!r}); "
            "was it written by another program?"
        )
    version = int(a.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: token cache format version {version}; this evmamba reads version {FORMAT_VERSION}")
    if need_complete and not bool(a.get("complete", False)):
        raise ValueError(
            f"{path}: incomplete token cache ({int(a.get('n_done', 0))} of {int(a.get('n_samples', 0))} samples "
            "written; the run that wrote it was interrupted). Run `evmamba preprocess` again to finish it."
        )
    key = _attr_str(a.get("config_hash", ""))
    if expected_hash is not None and key != expected_hash:
        raise ValueError(
            f"{path}: token cache was made from a different config (hash {key}, expected {expected_hash})"
        )
    missing = [k for k in _ATTRS if k not in a]
    if missing:
        raise ValueError(f"{path}: token cache lacks attribute(s) {missing}")
    missing = [k for k in (*_ARRAYS, *_PER_SAMPLE, "offsets", "source") if k not in f]
    if missing:
        raise ValueError(f"{path}: token cache lacks dataset(s) {missing}")
    n = int(a["n_done"]) if not need_complete else int(a["n_samples"])
    if need_complete and int(a["n_done"]) != n:
        raise ValueError(f"{path}: token cache marked complete with {int(a['n_done'])} of {n} samples written")
    offsets = f["offsets"]
    if offsets.shape[0] < n + 1:
        raise ValueError(f"{path}: dataset 'offsets' has {offsets.shape[0]} entries; {n + 1} expected")
    for k in (*_PER_SAMPLE, "source"):
        if f[k].shape[0] < n:
            raise ValueError(f"{path}: dataset '{k}' has {f[k].shape[0]} entries; {n} expected")
    off = offsets[: n + 1]
    total = int(off[-1])
    if off[0] != 0 or (n and np.any(np.diff(off) < 0)):
        raise ValueError(f"{path}: dataset 'offsets' must start at 0 and never decrease")
    for k in _ARRAYS:
        if f[k].shape[0] < total:
            raise ValueError(f"{path}: dataset '{k}' has {f[k].shape[0]} entries; offsets need {total}")
    return {
        "config": json.loads(_attr_str(a["config"])),
        "config_hash": key,
        "dataset": _attr_str(a["dataset"]),
        "split": _attr_str(a["split"]),
        "sensor_size": tuple(int(v) for v in a["sensor_size"]),
        "vocab_size": int(a["vocab_size"]),
        "classes": tuple(json.loads(_attr_str(a["classes"]))),
        "n_samples": int(a["n_samples"]),
        "n_done": int(a["n_done"]),
        "n_empty": int(a["n_empty"]),
        "n_tokens": total,
        "complete": bool(a.get("complete", False)),
    }


def inspect_cache(path: str | os.PathLike, expected_hash: str | None = None) -> dict[str, Any]:
    """Check that ``path`` is a complete token cache (and, if given, made with config hash ``expected_hash``).

    Reads only attributes and offsets. Returns the attributes as plain values (``config``, ``config_hash``,
    ``dataset``, ``split``, ``sensor_size``, ``vocab_size``, ``classes``, ``n_samples``, ``n_empty``,
    ``n_tokens``, ...). Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file
    and the problem for a truncated, foreign, incomplete or mismatched one.
    """
    path = Path(path)
    with _open_h5(path) as f:
        return _check_layout(f, path, expected_hash, need_complete=True)


#: Bytes of HDF5 metadata (chunk index nodes, mostly) a lazily reading :class:`TokenCache` keeps per process.
METADATA_CACHE_BYTES = 2 << 20


def _bound_metadata_cache(f: h5py.File) -> None:
    """Hold ``f``'s HDF5 metadata cache at :data:`METADATA_CACHE_BYTES`. It fills with the chunk index of
    the samples read -- about 40 bytes per chunk of ``_CHUNK`` tokens, so 0.6 MB for a 5 GB cache -- up to
    its initial size (2 MiB), which HDF5 may grow up to 32 MiB per open file when its hit rate is low: per
    loader worker, memory that would grow with the file. A chunk index node evicted is read again from the
    page cache in microseconds."""
    config = f.id.get_mdc_config()
    config.set_initial_size = True
    config.initial_size = config.max_size = METADATA_CACHE_BYTES
    config.min_size = min(config.min_size, METADATA_CACHE_BYTES)
    f.id.set_mdc_config(config)


class TokenCache(Sequence):
    """A token cache file as a sequence: ``cache[i] -> (TokenSequence, label)``.

    Args:
        path: an HDF5 file written by :func:`build_cache` / :func:`ensure_cache`.
        expected_hash: if given, the file must have been made from a config with this hash
            (see :func:`cache_key`).
        in_memory: ``True`` loads every token array at open (fast random access; host memory
            :data:`BYTES_PER_TOKEN` bytes per token). ``False`` reads each item from the file when it is asked
            for: host memory then holds only the per-sample index (offsets, labels: 16 bytes per sample)
            and at most :data:`METADATA_CACHE_BYTES` of HDF5 metadata per process, whatever the number of
            tokens, and the operating system's page cache does the caching. The file is opened once per
            process, on first access in that process (so a ``torch.utils.data.DataLoader`` worker, forked
            or spawned, opens its own handle and never uses one opened before the fork). ``None`` (the
            default) chooses: in memory when the token arrays take at most ``memory_limit`` bytes, else
            from the file.
        memory_limit: the size in bytes of the largest token arrays that ``in_memory=None`` loads whole
            (default :data:`IN_MEMORY_MAX_BYTES`, 1 GiB).
        drop_empty: index only the samples that have at least one token.

    Attributes: ``path``, ``sensor_size``, ``vocab_size``, ``classes``, ``config`` (dict), ``config_hash``,
    ``dataset``, ``split``, ``labels`` ((len,) int64), ``lengths`` ((len,) int64 tokens per sample),
    ``indices`` (positions in the file of the samples served), ``n_empty`` (empty samples in the file),
    ``n_tokens`` and ``nbytes`` (tokens in the file and the bytes of their arrays), ``in_memory`` (whether
    the arrays were loaded). Opening raises ``ValueError`` naming the file for a truncated, foreign,
    incomplete or mismatched file; reading an item from the file raises it for token ids outside the
    vocabulary (a loaded file is checked whole at open).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        expected_hash: str | None = None,
        in_memory: bool | None = None,
        memory_limit: int | None = None,
        drop_empty: bool = False,
    ):
        self.path = Path(path)
        if in_memory is not None and not isinstance(in_memory, (bool, np.bool_)):
            raise TypeError(f"{self.path}: argument 'in_memory' must be True, False or None; got {in_memory!r}")
        if memory_limit is None:
            memory_limit = IN_MEMORY_MAX_BYTES
        if isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, np.integer)) or memory_limit < 0:
            raise ValueError(f"{self.path}: argument 'memory_limit' must be an int >= 0 (bytes); got {memory_limit!r}")
        with _open_h5(self.path) as f:
            info = _check_layout(f, self.path, expected_hash, need_complete=True)
            n = info["n_samples"]
            self.n_tokens = info["n_tokens"]
            self.nbytes = self.n_tokens * BYTES_PER_TOKEN
            if in_memory is None:
                in_memory = self.nbytes <= memory_limit
            self.in_memory = bool(in_memory)
            try:
                self._offsets = f["offsets"][: n + 1].astype(np.int64)
                all_labels = f["labels"][:n].astype(np.int64)
                self._arrays = {k: f[k][: info["n_tokens"]] for k in _ARRAYS} if in_memory else None
            except OSError as exc:
                raise ValueError(f"{self.path}: damaged token cache: {exc}") from None
        if all_labels.size and (all_labels.min() < 0 or all_labels.max() >= len(info["classes"])):
            raise ValueError(f"{self.path}: dataset 'labels' holds values outside 0..{len(info['classes']) - 1}")
        if self._arrays is not None and info["n_tokens"]:
            tokens = self._arrays["tokens"]
            if tokens.min() < 0 or tokens.max() >= info["vocab_size"]:
                raise ValueError(f"{self.path}: dataset 'tokens' holds ids outside 0..{info['vocab_size'] - 1}")
        self._sources: list[str] | None = None
        self.info = info
        self.config = info["config"]
        self.config_hash = info["config_hash"]
        self.dataset = info["dataset"]
        self.split = info["split"]
        self.sensor_size = info["sensor_size"]
        self.vocab_size = info["vocab_size"]
        self.classes = info["classes"]
        self.n_empty = info["n_empty"]
        all_lengths = np.diff(self._offsets)
        self.indices = np.flatnonzero(all_lengths > 0) if drop_empty else np.arange(n)
        self.labels = all_labels[self.indices]
        self.lengths = all_lengths[self.indices]
        self._file: h5py.File | None = None
        self._file_pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def _h5(self) -> dict[str, h5py.Dataset]:
        # One handle per process: HDF5 handles must not cross a fork, so one inherited from the parent is
        # replaced, never read from. The dataset objects are kept, as looking them up by name costs more
        # than reading a sample. No chunk cache: each sample is read once, straight from the file into its
        # arrays; HDF5's default cache (1 MiB per dataset) made a read 3x slower and held ~35 MB per process.
        if self._file is None or self._file_pid != os.getpid():
            self._file = _open_h5(self.path, rdcc_nbytes=0)
            _bound_metadata_cache(self._file)
            self._file_pid = os.getpid()
            self._datasets = {k: self._file[k] for k in _ARRAYS}
        return self._datasets

    def __getitem__(self, i: int) -> tuple[TokenSequence, int]:
        return self.window(i, 0, None)

    def window(self, i: int, start: int, stop: int | None) -> tuple[TokenSequence, int]:
        """Tokens ``[start, stop)`` of item ``i`` (``stop`` None: to its end; both clipped to its length) and
        its label: ``cache.window(i, a, b)`` is ``cache[i]`` cut to ``[a:b]``, but read from the file alone
        when the cache is not in memory -- a random crop of an hour-long recording reads only the crop."""
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"{self.path}: index must be an int; got {type(i).__name__}")
        for name, v in (("start", start), ("stop", stop)):
            if v is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0):
                raise ValueError(f"{self.path}: window {name} must be an int >= 0; got {v!r}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.path}: index {i} out of range for {n} samples")
        j = int(self.indices[i])
        first, end = int(self._offsets[j]), int(self._offsets[j + 1])
        lo = min(first + int(start), end)
        hi = end if stop is None else max(lo, min(first + int(stop), end))
        if self._arrays is not None:
            seq = TokenSequence(*(self._arrays[k][lo:hi] for k in _ARRAYS))
        else:
            seq = self._read(j, lo, hi)
        return seq, int(self.labels[i])

    def _read(self, j: int, lo: int, hi: int) -> TokenSequence:
        """Sample ``j`` of the file (tokens ``[lo, hi)``), read from disk and checked."""
        try:
            seq = TokenSequence(*(np.asarray(d[lo:hi]) for d in self._h5().values()))
        except OSError as exc:
            raise ValueError(f"{self.path}: damaged token cache, sample {j}: {exc}") from None
        tokens = seq.tokens
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(
                f"{self.path}: dataset 'tokens' of sample {j} holds ids outside 0..{self.vocab_size - 1} "
                "(a damaged file; rebuild it with --force)"
            )
        return seq

    def source(self, i: int) -> str:
        """Where sample ``i`` came from (as the dataset named it)."""
        if self._sources is None:
            with h5py.File(self.path, "r") as f:
                self._sources = [_attr_str(s) for s in f["source"][: self.info["n_samples"]]]
        return self._sources[int(self.indices[i])]

    def close(self) -> None:
        """Close the file handle of a lazily reading cache (it reopens on the next access)."""
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
        self._file = None
        self._datasets = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_file_pid"] = None
        state["_datasets"] = None
        return state

    def __repr__(self) -> str:
        return f"TokenCache({str(self.path)!r}, samples={len(self)}, vocab_size={self.vocab_size})"


# -- writing ----------------------------------------------------------------------------------------------


def _check_count(name: str, value, source: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{source}: argument '{name}' must be an int >= 1; got {value!r}")


# The dataset and binning config of a worker process (set once by the pool initializer).
_WORKER_STATE: tuple[Any, BinningConfig] | None = None


def _init_worker(dataset, binning: BinningConfig) -> None:
    global _WORKER_STATE
    _WORKER_STATE = (dataset, binning)


def _init_pool_worker(dataset, binning: BinningConfig) -> None:
    """A pool worker's initialiser: Ctrl-C is the parent's to handle. A worker that died of it while passing
    a result back would leave the result queue's lock taken for good, and the pool's shutdown would then wait
    on that lock forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(dataset, binning)


def _bin_block(indices: Sequence[int]) -> dict[str, Any]:
    """Read and bin the samples ``indices`` of the worker's dataset; arrays concatenated in index order."""
    dataset, binning = _WORKER_STATE  # type: ignore[misc]
    seqs, labels, sources, n_events = [], [], [], []
    for i in indices:
        events, label = dataset[i]
        src = dataset.source(i)
        seqs.append(bin_events(events, dataset.sensor_size, binning, source=src))
        labels.append(int(label))
        sources.append(src)
        n_events.append(int(events.shape[0]))
    cat = TokenSequence.concatenate(seqs)
    return {
        **{k: getattr(cat, k) for k in _ARRAYS},
        "lengths": np.array([s.num_tokens for s in seqs], np.int64),
        "labels": np.array(labels, np.int64),
        "n_events": np.array(n_events, np.int64),
        "source": sources,
    }


def _new_partial(path: Path, dataset, binning: BinningConfig, content: dict, key: str, split: str) -> None:
    _create_partial(path, dataset.sensor_size, dataset.classes, len(dataset), binning, content, key, split)


def _create_partial(path: Path, sensor_size, classes, n_samples: int, binning: BinningConfig, content: dict, key: str,
                    split: str) -> None:
    w, h, p = (int(v) for v in sensor_size)
    with h5py.File(path, "w") as f:
        for k, dt in _ARRAYS.items():
            f.create_dataset(k, shape=(0,), maxshape=(None,), dtype=dt, chunks=(_CHUNK,))
        for k, dt in _PER_SAMPLE.items():
            f.create_dataset(k, shape=(0,), maxshape=(None,), dtype=dt, chunks=(4096,))
        f.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(4096,))
        f.create_dataset("source", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(4096,))
        a = f.attrs
        a["format"] = FORMAT
        a["format_version"] = FORMAT_VERSION
        a["config"] = json.dumps(content, sort_keys=True)
        a["config_hash"] = key
        a["dataset"] = content["dataset"]["name"]
        a["split"] = split
        a["sensor_size"] = np.array([w, h, p], np.int64)
        a["vocab_size"] = int(vocab_size((w, h, p), binning))
        a["classes"] = json.dumps([str(c) for c in classes])
        a["n_samples"] = int(n_samples)
        a["n_done"] = 0
        a["n_empty"] = 0
        a["complete"] = False


def _resume_point(path: Path, key: str, n_samples: int, fresh_partial: Callable[[Path], None]) -> int | None:
    """Continue the partial file ``path`` made with config ``key``: the number of samples kept, or None
    (nothing to keep, or it cannot be continued: start over).

    HDF5 files are not safe against a crash while writing: a run killed in the middle of appending a block
    can leave the file's internal structures (the heap of the ``source`` strings, chunk indices) half
    updated, so that reading the finished samples still works but the next write fails. So the finished
    samples -- everything up to the last ``n_done`` commit -- are copied into a new file made by
    ``fresh_partial(new_path)``, which then replaces ``path``; the old file is only read.
    """
    copy = path.with_name(path.name + ".copy")
    try:
        with _open_h5(path, "r") as old:
            info = _check_layout(old, path, key, need_complete=False)
            if info["n_samples"] != n_samples or info["n_done"] == 0:
                return None
            fresh_partial(copy)
            with h5py.File(copy, "r+") as new:
                _copy_finished(old, new, info["n_done"])
        os.replace(copy, path)
        return info["n_done"]
    except (ValueError, OSError, KeyError) as exc:
        print(f"cannot continue {path} ({exc}); starting over", file=sys.stderr)
        return None
    finally:
        if copy.exists():
            copy.unlink()


_COPY_SLICE = 1 << 22  # elements per read when copying finished samples (at most 32 MB)


def _copy_finished(old: h5py.File, new: h5py.File, n: int) -> None:
    """Copy the first ``n`` samples of ``old`` into the empty token cache ``new`` and commit them."""
    total = int(old["offsets"][n])
    for names, size in ((tuple(_ARRAYS), total), ((*_PER_SAMPLE, "source"), n), (("offsets",), n + 1)):
        for k in names:
            new[k].resize((size,))
            for lo in range(0, size, _COPY_SLICE):
                hi = min(lo + _COPY_SLICE, size)
                new[k][lo:hi] = old[k][lo:hi]
    new.attrs["n_empty"] = int(np.count_nonzero(np.diff(new["offsets"][:]) == 0))
    new.attrs["n_done"] = n
    new.flush()


def _append_block(f: h5py.File, block: dict[str, Any]) -> None:
    """Append one block of samples, then advance ``n_done`` (the commit point) and flush."""
    n0 = int(f.attrs["n_done"])
    total0 = int(f["offsets"][n0])
    m = block["labels"].shape[0]
    size = block["tokens"].shape[0]
    for k in _ARRAYS:
        f[k].resize((total0 + size,))
        f[k][total0:] = block[k]
    for k in _PER_SAMPLE:
        f[k].resize((n0 + m,))
        f[k][n0:] = block[k]
    f["source"].resize((n0 + m,))
    f["source"][n0:] = block["source"]
    f["offsets"].resize((n0 + m + 1,))
    f["offsets"][n0 + 1 :] = total0 + np.cumsum(block["lengths"])
    f.attrs["n_empty"] = int(f.attrs["n_empty"]) + int(np.count_nonzero(block["lengths"] == 0))
    f.attrs["n_done"] = n0 + m
    f.flush()


@contextlib.contextmanager
def _build_lock(path: Path):
    """Serialise builders of the same file (two runs started together wait for each other)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no lock
        yield
        return
    lock = path.with_name(f".{path.name}.lock")  # hidden: it stays behind, empty
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pool_context():
    # fork starts workers in milliseconds and shares the compiled numba code; spawn elsewhere.
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if sys.platform.startswith("linux") and "fork" in methods else "spawn")


def build_cache(
    dataset,
    cfg: Mapping,
    path: str | os.PathLike,
    *,
    split: str,
    workers: int = 1,
    block_size: int = 64,
    progress: bool = True,
    resume: bool = True,
) -> Path:
    """Bin every sample of ``dataset`` and write the token cache ``path`` (atomically, resumably).

    Args:
        dataset: an event dataset: ``len()``, ``[i] -> (events, label)``, ``source(i)``, ``sensor_size``,
            ``classes``; picklable when ``workers > 1`` on platforms without ``fork``.
        cfg: a config with ``dataset`` and ``binning`` sections (hashed into the file with the dataset's
            fingerprint, see :func:`cache_key`).
        path: the final file; ``<path>.partial`` holds the work in progress.
        split: the split's name, recorded in the file.
        workers: processes that read and bin samples (1 = in this process).
        block_size: samples per block, the unit of work and of resumption.
        progress: show a tqdm progress bar (on stderr).
        resume: continue a partial file of the same config and data; False starts over.

    Returns ``path``.
    """
    path = Path(path)
    _check_count("workers", workers, "build_cache")
    _check_count("block_size", block_size, "build_cache")
    missing = [a for a in ("__len__", "__getitem__", "source", "sensor_size", "classes") if not hasattr(dataset, a)]
    if missing:
        raise TypeError(f"build_cache: argument 'dataset' ({type(dataset).__name__}) lacks {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(path):
        key, content = cache_key(cfg, dataset)
        _build_locked(dataset, key, content, path, split, workers, block_size, progress, resume)
    return path


def _build_locked(
    dataset, key: str, content: dict, path: Path, split: str, workers: int, block_size: int, progress: bool,
    resume: bool,
) -> None:
    binning = BinningConfig.from_dict(content["binning"], source="config: section 'binning'")
    n = len(dataset)
    partial = path.with_name(path.name + ".partial")
    def fresh(where: Path) -> None:
        _new_partial(where, dataset, binning, content, key, split)

    start = _resume_point(partial, key, n, fresh) if (resume and partial.exists()) else None
    if start:
        print(f"continuing {partial} after {start} of {n} samples", file=sys.stderr)
    if start is None:
        fresh(partial)
        start = 0
    blocks = [range(b, min(b + block_size, n)) for b in range(start, n, block_size)]
    desc = f"{content['dataset']['name']} {split}"
    _write_blocks(partial, dataset, binning, blocks, n, start, workers, progress, desc)
    with h5py.File(partial, "r+") as f:
        f.attrs["complete"] = True  # last: a file without it is never taken for a finished one
    os.replace(partial, path)


#: Blocks a preprocessing worker may be ahead of the writer (see :func:`_in_order`).
_IN_FLIGHT_PER_WORKER = 2


def _in_order(pool, blocks: Sequence[range], in_flight: int):
    """``_bin_block`` of each block, computed by ``pool``, yielded in block order, with at most ``in_flight``
    blocks submitted and not yet taken. (``Pool.imap`` submits every block at once and keeps the results
    that the writer has not yet taken: on a large dataset and a slow disk they would fill the memory.)"""
    pending: collections.deque = collections.deque()
    todo = iter(blocks)
    for block in itertools.islice(todo, in_flight):
        pending.append(pool.apply_async(_bin_block, (block,)))
    while pending:
        result = pending.popleft().get()
        nxt = next(todo, None)
        if nxt is not None:
            pending.append(pool.apply_async(_bin_block, (nxt,)))
        yield result


def _write_blocks(partial: Path, dataset, binning, blocks, n, start, workers, progress, desc) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=start, desc=desc, unit="sample", disable=not progress, leave=False)
    pool = None
    _init_worker(dataset, binning)
    try:
        # The first block is always binned here: a broken dataset fails with a plain traceback, and the
        # forked workers inherit the compiled (or cache-loaded) numba kernels instead of each loading them.
        if blocks:
            first = _bin_block(blocks[0])
        if workers > 1 and len(blocks) > 2:
            procs = min(workers, len(blocks) - 1)
            pool = _pool_context().Pool(procs, initializer=_init_pool_worker, initargs=(dataset, binning))
            rest = _in_order(pool, blocks[1:], _IN_FLIGHT_PER_WORKER * procs)
        else:
            rest = map(_bin_block, blocks[1:])
        # Results arrive in block order whatever the number of workers, so the file is the same.
        with h5py.File(partial, "r+") as f:
            for block in itertools.chain([first] if blocks else [], rest):
                _append_block(f, block)
                bar.update(block["labels"].shape[0])
    finally:
        bar.close()
        if pool is not None:
            # Not terminate(): a worker killed while putting its result on the queue keeps the queue's lock, and
            # the pool's own shutdown then waits on it forever (seen after a worker raised). The blocks still in
            # flight -- at most _IN_FLIGHT_PER_WORKER a worker -- are finished and dropped; the workers then exit.
            pool.close()
            pool.join()


def write_cache(
    path: str | os.PathLike,
    blocks,
    *,
    n_samples: int,
    sensor_size,
    classes: Sequence[str],
    binning: Mapping | BinningConfig | None = None,
    dataset_name: str = "tokens",
    split: str = "train",
    origin: Any = None,
    progress: bool = True,
) -> Path:
    """Write a token cache from tokens made elsewhere (no binning): e.g. simulated tokens for benchmarks.

    ``blocks`` yields dicts of one or more samples each, in sample order: ``tokens`` (T,) int, ``counts``
    (T,) int, ``dt`` (T,) float (binning ``time_unit``), ``t`` (T,) int µs, ``lengths`` (m,) tokens per
    sample (summing to T), ``labels`` (m,) class indices, and optionally ``n_events`` (m,) and ``source``
    (m strings; default ``"<dataset_name>:<split>:<i>"``). Together they must hold ``n_samples`` samples.
    Token ids must lie below the vocabulary of ``sensor_size`` and ``binning`` (a section or
    :class:`~evmamba.pipeline.binning.BinningConfig`; default: the binning defaults). ``origin`` (any
    JSON value) describes where the tokens came from; it is hashed into the ``config_hash``. The file is
    written as :func:`build_cache` writes it (``<path>.partial``, then renamed) and reads back with
    :class:`TokenCache`. Raises ``ValueError`` naming the block and field for inconsistent blocks.
    """
    path = Path(path)
    if not isinstance(binning, BinningConfig):
        binning = BinningConfig.from_dict(_plain(binning or {}, "binning"), source="write_cache: argument 'binning'")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 0:
        raise ValueError(f"write_cache: argument 'n_samples' must be an int >= 0; got {n_samples!r}")
    size = check_sensor_size(sensor_size, "write_cache: argument 'sensor_size'")
    classes = [str(c) for c in classes]
    if not classes:
        raise ValueError("write_cache: argument 'classes' must name at least one class")
    vocab = int(vocab_size(size, binning))
    content = {"format_version": FORMAT_VERSION, "decoder_version": DECODER_VERSION, "dataset": {"name": dataset_name},
               "binning": binning.to_dict(), "data": {"written_by": "write_cache", "origin": origin}}
    key = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]
    content = json.loads(json.dumps(content, sort_keys=True, default=str))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    _create_partial(partial, size, classes, n_samples, binning, content, key, split)
    from tqdm.auto import tqdm

    done = 0
    with h5py.File(partial, "r+") as f, tqdm(total=n_samples, desc=f"writing {path.name}", unit="sample",
                                             disable=not progress, leave=False) as bar:
        for b, block in enumerate(blocks):
            block = _check_block(block, b, done, vocab, len(classes), dataset_name, split)
            m = block["labels"].shape[0]
            if done + m > n_samples:
                raise ValueError(f"write_cache: block {b} brings the samples to {done + m}; n_samples is {n_samples}")
            _append_block(f, block)
            done += m
            bar.update(m)
        if done != n_samples:
            raise ValueError(f"write_cache: the blocks hold {done} samples; n_samples is {n_samples}")
        f.attrs["complete"] = True
    os.replace(partial, path)
    return path


def _check_block(block: Mapping, b: int, first: int, vocab: int, n_classes: int, name: str, split: str) -> dict:
    """One block for :func:`write_cache` as arrays of the file's dtypes, checked."""
    if not isinstance(block, Mapping):
        raise TypeError(f"write_cache: block {b} must be a mapping of arrays; got {type(block).__name__}")
    missing = [k for k in (*_ARRAYS, "lengths", "labels") if k not in block]
    if missing:
        raise ValueError(f"write_cache: block {b} lacks field(s) {missing}")
    out: dict[str, Any] = {k: np.asarray(block[k]).astype(dt, copy=False) for k, dt in _ARRAYS.items()}
    lengths = np.asarray(block["lengths"]).astype(np.int64, copy=False)
    labels = np.asarray(block["labels"]).astype(np.int64, copy=False)
    m = labels.shape[0]
    total = out["tokens"].shape[0]
    for k, a in (*out.items(), ("lengths", lengths), ("labels", labels)):
        if a.ndim != 1:
            raise ValueError(f"write_cache: block {b} field '{k}' must be 1-D; got shape {a.shape}")
    for k in _ARRAYS:
        if out[k].shape[0] != total:
            raise ValueError(f"write_cache: block {b} field '{k}' has {out[k].shape[0]} entries; 'tokens' has {total}")
    if lengths.shape[0] != m or (m and lengths.min() < 0) or int(lengths.sum()) != total:
        raise ValueError(
            f"write_cache: block {b} field 'lengths' must give {m} non-negative lengths summing to {total}"
        )
    if m and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"write_cache: block {b} field 'labels' holds values outside 0..{n_classes - 1}")
    if total and (out["tokens"].min() < 0 or out["tokens"].max() >= vocab):
        raise ValueError(f"write_cache: block {b} field 'tokens' holds ids outside the vocabulary 0..{vocab - 1}")
    n_events = np.asarray(block.get("n_events", lengths)).astype(np.int64, copy=False)
    given = block.get("source")
    source = [f"{name}:{split}:{first + i}" for i in range(m)] if given is None else list(given)
    if n_events.shape != (m,) or len(source) != m:
        raise ValueError(f"write_cache: block {b} fields 'n_events' and 'source' must have {m} entries")
    return {**out, "lengths": lengths, "labels": labels, "n_events": n_events, "source": [str(v) for v in source]}


# -- the entry point for training --------------------------------------------------------------------------

def dataset_from_config(dataset_cfg: Mapping, split: str, make_dataset: DatasetFactory | None = None):
    """The event dataset a ``dataset`` section describes, exactly as the token cache sees it: the one
    builder, :func:`~evmamba.datasets.registry.build_dataset` (``max_samples`` and the rest included;
    ``make_dataset(section, split)`` replaces the registry's constructor). Position ``i`` of the result
    is sample ``i`` of the cache."""
    from .registry import build_dataset

    return build_dataset(dataset_cfg, split, make_dataset)


def update_cache(
    cfg: Mapping,
    split: str,
    workers: int = 1,
    *,
    force: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    make_dataset: DatasetFactory | None = None,
    block_size: int = 64,
) -> tuple[Path, bool]:
    """:func:`ensure_cache`, also telling whether the file was (re)built: ``(path, built)``."""
    _check_count("workers", workers, "ensure_cache")
    _check_count("block_size", block_size, "ensure_cache")
    if not isinstance(split, str) or not split or any(c in split for c in "/\\\0"):
        raise ValueError(f"ensure_cache: argument 'split' must be a plain name; got {split!r}")
    dataset = dataset_from_config(_sections(cfg)[0], split, make_dataset)
    key, content = cache_key(cfg, dataset)  # the data's fingerprint, taken once
    path = _file_name(cfg, split, cache_dir, key, content)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Under the lock, so that a second run started at the same time waits and then finds the file.
    with _build_lock(path):
        if path.exists() and not force:
            try:
                inspect_cache(path, expected_hash=key)
            except ValueError as exc:
                raise ValueError(
                    f"{exc} (delete the file, or rebuild it with --force: `evmamba preprocess`, `evmamba train` "
                    "and `evmamba evaluate` take it)"
                ) from None
            return path, False
        _build_locked(dataset, key, content, path, split, workers, block_size, progress, resume=not force)
    return path, True


def ensure_cache(
    cfg: Mapping,
    split: str,
    workers: int = 1,
    *,
    force: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    make_dataset: DatasetFactory | None = None,
    block_size: int = 64,
) -> Path:
    """The token cache of ``split`` for ``cfg``, built first if it does not exist (or ``force``).

    ``cfg`` is a resolved config with ``dataset`` and ``binning`` sections (other sections are ignored).
    The split's dataset is built (:func:`~evmamba.datasets.registry.build_dataset`, which also applies
    ``dataset.max_samples``) and fingerprinted, and the file is :func:`cache_path` of both: changed data
    give a new file. An existing file is checked (:func:`inspect_cache`); a damaged one raises
    ``ValueError`` naming it (rebuild with ``force=True``). ``make_dataset(dataset_section, split)``
    replaces the registry's constructor. ``workers``, ``progress`` and ``block_size`` are as for
    :func:`build_cache`.
    """
    return update_cache(cfg, split, workers, force=force, progress=progress, cache_dir=cache_dir,
                        make_dataset=make_dataset, block_size=block_size)[0]
