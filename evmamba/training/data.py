"""The data of a run, from a resolved config: which datasets, caches and wrappers (:mod:`evmamba.datasets`)
serve training, validation and test, and the loaders over them.

Token models (``model.type: event_mamba``) read the HDF5 token cache of each split (built on first use by
:func:`evmamba.datasets.cache.ensure_cache`). With an active ``augment`` section, training items are instead
made on the fly from the raw recordings (augment, then bin) by
:class:`evmamba.datasets.wrappers.BinnedDataset`; with mixing on (``augment.mix_p > 0``),
:class:`evmamba.datasets.wrappers.EventMixDataset` augments each recording, mixes it with a partner drawn from
the training items (never from the validation hold-out) and gives it a soft label, which the collate
functions pass on as ``soft_labels``. ``train.max_tokens`` crops long training sequences to a random
window. Frame models (``model.type: frame_resnet``) turn raw recordings into event-count frames with
:func:`evmamba.pipeline.frames.to_frames` (bit-identical to ``tonic.transforms.ToFrame``); mixing works
for them the same way.

Validation: ``train.val_split`` names a split of the dataset to validate on (SSC's ``valid``); otherwise
``train.val_fraction > 0`` holds out that fraction of the training split, stratified by class
(:func:`evmamba.datasets.splits.stratified_holdout`). The test split is never used to choose anything.

Every random choice is a function of ``(seed, epoch, index)``, so an epoch's data are the same whether or
not the run was resumed, and whatever the number of loader workers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from ..datasets.batching import ShardedBatches, collate_frames
from ..datasets.wrappers import FrameDataset, IndexedSubset, TokenCrop
from ..model.checkpoint import FRAME_MODEL, TOKEN_MODEL, DataInfo
from ..pipeline.binning import BinningConfig
from ..pipeline.binning import token_grid as binning_token_grid
from ..pipeline.binning import vocab_size as binning_vocab_size
from .distributed import DistInfo, wait_for_main
from .reproducibility import worker_init
from .settings import train_settings


def model_type(cfg: Mapping) -> str:
    """``model.type`` of a config (default ``event_mamba``); ``ValueError`` for an unknown one."""
    kind = (cfg.get("model") or {}).get("type", TOKEN_MODEL)
    if kind not in (TOKEN_MODEL, FRAME_MODEL):
        raise ValueError(f"config: key 'model.type' must be {TOKEN_MODEL!r} or {FRAME_MODEL!r}; got {kind!r}")
    return kind


def section(cfg: Mapping, name: str) -> dict[str, Any]:
    """A config section as a plain dict (empty when absent)."""
    value = cfg.get(name)
    if value is None:
        return {}
    if hasattr(value, "_metadata"):
        from omegaconf import OmegaConf

        value = OmegaConf.to_container(value, resolve=True)
    if not isinstance(value, Mapping):
        raise ValueError(f"config: section '{name}' must be a mapping; got {type(value).__name__}")
    return dict(value)


def token_grid(sensor_size, binning: BinningConfig) -> list[int]:
    """``(W', H', P)`` of the token ids (DESIGN §5), as a list for checkpoints."""
    return [int(v) for v in binning_token_grid(tuple(int(v) for v in sensor_size), binning)]


@dataclass(frozen=True)
class FramesConfig:
    """The ``frames`` section (frame models): ``n_time_bins`` equal time slices per recording, spatial
    ``downsample`` k, and ``memoize`` (keep unaugmented frames in memory after the first access). Values are
    checked by :class:`~evmamba.datasets.wrappers.FrameDataset` when the data are built."""

    n_time_bins: int = 8
    downsample: int = 1
    memoize: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping) -> FramesConfig:
        """The section of a whole config (defaults when absent); ``ValueError`` naming unknown keys and a
        ``memoize`` that is not a bool."""
        given = section(cfg, "frames")
        valid = sorted(f.name for f in fields(cls))
        unknown = sorted(set(given) - set(valid))
        if unknown:
            raise ValueError(f"config: unknown key(s) {['frames.' + k for k in unknown]}; valid: {valid}")
        if "memoize" in given and not isinstance(given["memoize"], bool):
            raise ValueError(f"config: key 'frames.memoize' must be true or false; got {given['memoize']!r}")
        return cls(**given)


# ------------------------------------------------------------------------------------------ building
@dataclass
class Data:
    """Datasets, their lengths (for bucketing) and the collate function of one run."""

    info: DataInfo
    train: Any
    test: Any
    val: Any = None
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    collate: Callable = None  # type: ignore[assignment]


def _build_dataset(dataset_cfg: Mapping, split: str):
    # The one dataset builder (``dataset.max_samples`` and the rest), as the token caches use it.
    from ..datasets.registry import build_dataset

    return build_dataset(dataset_cfg, split)


def _ensure_cache(cfg, split: str, info: DistInfo, workers: int, progress: bool, force: bool = False):
    """The split's token cache path; rank 0 builds it (again, when ``force``) while the other processes wait."""
    from ..datasets.cache import ensure_cache

    path = None
    if info.is_main:
        path = ensure_cache(cfg, split, workers, progress=progress, force=force)
    wait_for_main(info)  # building may take longer than a GPU collective may wait
    if not info.is_main:
        path = ensure_cache(cfg, split, workers, progress=False)
    return path


def _flips(train_cfg) -> dict[str, bool]:
    """Which mirror flips the training augmentation may apply to this dataset (``train.allow_hflip``,
    ``train.allow_vflip``), as the dataset wrappers' keyword arguments."""
    return {"allow_hflip": bool(train_cfg.get("allow_hflip", True)),
            "allow_vflip": bool(train_cfg.get("allow_vflip", True))}


def _holdout(keys, labels, fraction: float, seed: int) -> np.ndarray:
    from ..datasets.splits import stratified_holdout

    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"config: key 'train.val_fraction' must lie in [0, 1); got {fraction}")
    if fraction == 0.0:
        return np.zeros(len(keys), dtype=bool)
    return stratified_holdout(list(keys), list(labels), fraction, seed)


def _split_plan(cfg: Mapping, train: bool, test_split: str) -> tuple[dict[str, str], float, int]:
    """``({"train": "train", "val": ..., "test": test_split}, val_fraction, seed)``: which split of the dataset
    serves each role (``val`` only with ``train.val_split``; ``train`` and ``val`` only when ``train``)."""
    train_cfg = section(cfg, "train")
    seed = int(train_cfg.get("seed", 0))
    val_fraction = float(train_cfg.get("val_fraction", 0.0))
    val_split = train_cfg.get("val_split")
    if val_split is not None and val_fraction > 0:
        raise ValueError("config: give either 'train.val_split' or 'train.val_fraction', not both")
    splits = {"train": "train", "test": test_split} if train else {"test": test_split}
    if train and val_split is not None:
        splits["val"] = str(val_split)
    return splits, val_fraction, seed


@dataclass
class RecordingSplit:
    """The recordings of one role (``train``, ``val`` or ``test``): positions ``indices`` (int64) of ``dataset``
    (an :class:`~evmamba.datasets.base.EventDataset`)."""

    dataset: Any
    indices: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.dataset.labels, dtype=np.int64)[self.indices]


def recording_splits(cfg: Mapping, *, train: bool = True, test_split: str = "test") -> dict[str, RecordingSplit]:
    """The raw recordings of each role of a run, split exactly as training splits them: ``train`` (the train
    split minus the held-out part), ``val`` (``train.val_split``, or the ``train.val_fraction`` held out of
    the train split, stratified by class and seeded by ``train.seed``; absent when neither is set) and
    ``test`` (``test_split``). ``train`` false gives only ``test``. Frame models read their data through this;
    token models hold out the same recordings (the held-out mask depends only on the recordings' sources,
    labels and seed) and drop those without tokens."""
    splits, val_fraction, seed = _split_plan(cfg, train, test_split)
    bases = {key: _build_dataset(section(cfg, "dataset"), s) for key, s in splits.items()}
    out: dict[str, RecordingSplit] = {}
    if "train" in bases:
        base = bases["train"]
        keys = [base.source(i) for i in range(len(base))]
        held = _holdout(keys, base.labels, val_fraction, seed)
        out["train"] = RecordingSplit(base, np.flatnonzero(~held))
        if held.any():
            out["val"] = RecordingSplit(base, np.flatnonzero(held))
    for key in ("val", "test"):
        if key in bases:
            out[key] = RecordingSplit(bases[key], np.arange(len(bases[key]), dtype=np.int64))
    return out


def check_splits_agree(described: Mapping[str, tuple[Any, Any]]) -> None:
    """``{where: (classes, sensor_size)}`` of every split of a run must agree: class ``k`` and token ``j`` must
    mean the same in each. ``ValueError`` naming both lists otherwise."""
    items = [(where, [str(c) for c in classes], [int(v) for v in size]) for where, (classes, size) in described.items()]
    for where, classes, size in items[1:]:
        ref_where, ref_classes, ref_size = items[0]
        if classes != ref_classes:
            raise ValueError(
                f"{where} has the classes {classes} but {ref_where} has {ref_classes}; every split of a dataset "
                "must share one class list (rebuild stale token caches with --force)"
            )
        if size != ref_size:
            raise ValueError(
                f"{where} has the sensor size {size} but {ref_where} has {ref_size}; every split of a dataset must "
                "share one sensor size (give dataset.sensor_size, or rebuild stale token caches with --force)"
            )


def build_data(cfg: Mapping, info: DistInfo | None = None, *, train: bool = True, test_split: str = "test",
               progress: bool = True, force: bool = False) -> Data:
    """Datasets of a run: token caches or frame datasets of the ``train`` split (with ``val`` held out of it
    when ``train.val_fraction > 0``; skipped when ``train`` is false, as evaluation needs only the test
    split) and of ``test_split`` (served as ``Data.test``). ``force`` rebuilds the token caches.

    Every split must have the same classes and sensor size (``ValueError`` naming both otherwise); datasets
    decide them once for all their splits."""
    from ..datasets.batching import collate
    from ..datasets.wrappers import BinnedDataset, EventMixDataset
    from ..pipeline.augment import AugmentConfig

    info = info or DistInfo()
    train_cfg = section(cfg, "train")
    workers = train_cfg.get("preprocess_workers") or min(8, os.cpu_count() or 1)
    augment = AugmentConfig.from_dict(section(cfg, "augment"), source="config: section 'augment'")
    splits, val_fraction, seed = _split_plan(cfg, train, test_split)
    kind = model_type(cfg)
    data: dict[str, Any] = {}
    lengths: dict[str, np.ndarray] = {}

    if kind == TOKEN_MODEL:
        from ..datasets.cache import TokenCache
        from ..datasets.wrappers import WithSurfaces
        from ..model.classifier import EventClassifier

        binning = BinningConfig.from_dict(section(cfg, "binning"), source="config: section 'binning'")
        # The local surfaces the model reads, if any.
        surface = EventClassifier.parse_section(section(cfg, "model"))[0].surface
        limit_gb = train_settings(cfg)["cache_memory_gb"]
        in_memory = True if limit_gb is None else None  # None: loaded whole up to the limit, else read per sample
        limit = None if limit_gb is None else int(limit_gb * 1e9)
        caches = {key: TokenCache(_ensure_cache(cfg, s, info, workers, progress, force), in_memory=in_memory,
                                  memory_limit=limit)
                  for key, s in splits.items()}
        check_splits_agree({f"token cache {c.path}": (c.classes, c.sensor_size) for c in caches.values()})
        ref = next(iter(caches.values()))
        meta = DataInfo(
            kind=kind, n_classes=len(ref.classes), classes=[str(c) for c in ref.classes],
            sensor_size=[int(v) for v in ref.sensor_size], vocab_size=int(ref.vocab_size),
            grid=token_grid(ref.sensor_size, binning),
        )
        if binning_vocab_size(tuple(meta.sensor_size), binning) != meta.vocab_size:
            raise ValueError(f"{ref.path}: vocabulary {meta.vocab_size} does not match the binning config")
        augment.check_sensor(meta.sensor_size, "config: section 'augment'")
        if "train" in caches:
            cache = caches["train"]
            keys = [cache.source(i) for i in range(len(cache))]
            held = _holdout(keys, cache.labels, val_fraction, seed)
            nonempty = cache.lengths > 0  # a sequence without tokens teaches nothing
            train_idx = np.flatnonzero(~held & nonempty)
            val_idx = np.flatnonzero(held & nonempty)
            if augment.active:
                base = _build_dataset(section(cfg, "dataset"), "train")
                flips = _flips(train_cfg)
                where = f"{section(cfg, 'dataset').get('name')} train"
                per_item = augment
                if augment.mixing:  # augment each sample, then mix; partners are training items only
                    base = EventMixDataset(base, base.sensor_size, augment, partners=cache.indices[train_idx],
                                           n_classes=meta.n_classes, seed=seed, **flips, source=where)
                    per_item = None
                binned = BinnedDataset(base, base.sensor_size, binning, augment=per_item, seed=seed, **flips,
                                       empty="keep", source=where)
                # Cache positions are dataset positions (the cache keeps empty samples).
                train_ds = IndexedSubset(binned, cache.indices[train_idx])
            else:
                train_ds = IndexedSubset(cache, train_idx)
            if surface is not None:  # before the crop: a window keeps the context of the tokens before it
                train_ds = WithSurfaces(train_ds, meta.grid, surface)
            max_tokens = train_cfg.get("max_tokens")
            if max_tokens is not None:
                # Straight from the cache, only the crop is read (the lengths are known ahead).
                # (Not with surfaces: they are made from the whole sequence, before the crop.)
                known = None if (augment.active or surface is not None) else cache.lengths[train_idx]
                train_ds = TokenCrop(train_ds, max_tokens, seed, lengths=known)
                lengths["train"] = np.minimum(cache.lengths[train_idx], max_tokens)
            else:
                lengths["train"] = cache.lengths[train_idx]
            data["train"] = train_ds
            if len(val_idx):
                data["val"] = IndexedSubset(cache, val_idx)
                lengths["val"] = cache.lengths[val_idx]
        if "val" in caches:
            data["val"] = caches["val"]
            lengths["val"] = caches["val"].lengths
        if "test" in caches:
            data["test"] = caches["test"]
            lengths["test"] = caches["test"].lengths
        if surface is not None:
            for key in ("val", "test"):
                if key in data:
                    data[key] = WithSurfaces(data[key], meta.grid, surface)
        result = Data(info=meta, train=data.get("train"), test=data.get("test"), val=data.get("val"),
                      lengths=lengths, collate=collate)
        return result

    # Frame models: recordings -> frames.
    frames_cfg = FramesConfig.from_config(cfg)
    n_bins, k, memo = frames_cfg.n_time_bins, frames_cfg.downsample, frames_cfg.memoize
    parts = recording_splits(cfg, train=train, test_split=test_split)
    named = {"train": "train", "val": splits.get("val", "train"), "test": test_split}
    check_splits_agree({f"split {named[key]!r} ({key}) of dataset {getattr(p.dataset, 'name', 'dataset')!r}":
                        (p.dataset.classes, p.dataset.sensor_size) for key, p in parts.items()})
    ref = next(iter(parts.values())).dataset
    probe = FrameDataset(ref, n_bins, k)
    meta = DataInfo(kind=kind, n_classes=len(ref.classes), classes=[str(c) for c in ref.classes],
                    sensor_size=[int(v) for v in ref.sensor_size], n_time_bins=n_bins,
                    frame_size=list(probe.frame_size))
    augment.check_sensor(meta.sensor_size, "config: section 'augment'")
    flips = _flips(train_cfg)
    for key, part in parts.items():
        if key == "train" and augment.mixing:  # augment each sample, then mix; partners are training items only
            mixed = EventMixDataset(part.dataset, part.dataset.sensor_size, augment, partners=part.indices,
                                    n_classes=meta.n_classes, seed=seed, **flips,
                                    source=f"{section(cfg, 'dataset').get('name')} train")
            frames = FrameDataset(mixed, n_bins, k, seed=seed, memoize=False)
        elif key == "train":
            frames = FrameDataset(part.dataset, n_bins, k, augment=augment, seed=seed, memoize=memo, **flips)
        else:
            frames = FrameDataset(part.dataset, n_bins, k, memoize=memo)
        whole = np.array_equal(part.indices, np.arange(len(part.dataset)))
        data[key] = frames if key != "train" and whole else IndexedSubset(frames, part.indices)
        lengths[key] = np.zeros(len(part.indices), np.int64)
    return Data(info=meta, train=data.get("train"), test=data.get("test"), val=data.get("val"),
                lengths=lengths, collate=collate_frames)


def loader_worker_init(worker_id: int) -> None:
    """``DataLoader`` worker initialiser: seeds (:func:`~evmamba.training.reproducibility.worker_init`), then
    ``gc.freeze()``. A forked worker shares the main process's pages (torch, the model code, the cache's
    index: ~540 MB) until it writes to them; the garbage collector's full collections write to every object
    they visit, which made each worker a private copy of those pages part-way through a long epoch (+110 MB
    of PSS over an epoch of 80 batches). Frozen, the inherited objects are never visited: they are the main
    process's to free."""
    import gc

    worker_init(worker_id)
    gc.freeze()


def make_loader(dataset, lengths: np.ndarray, batch_size: int, collate: Callable, *, shuffle: bool, seed: int,
                info: DistInfo | None = None, workers: int = 0, even: bool = True, batch_tokens: int | None = None):
    """A ``DataLoader`` over length-bucketed batches (shuffled per epoch from ``(seed, epoch)`` when
    ``shuffle``) of ``batch_size`` items per process -- or, with ``batch_tokens``, as many (at most
    ``batch_size``) as keep ``size x longest length <= batch_tokens`` -- as global batches of that many times
    the processes, split over them (:class:`ShardedBatches`), so that N processes at batch B step through the
    same samples as one at N x B. Returns ``(loader, batch_sampler)``; call ``batch_sampler.set_epoch(e)``
    (and the dataset's ``set_epoch``) before each epoch."""
    from ..datasets.batching import LengthBucketSampler

    info = info or DistInfo()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"config: batch size must be a positive int; got {batch_size!r}")
    if batch_tokens is not None and (isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int)
                                     or batch_tokens < 1):
        raise ValueError(f"config: key 'train.batch_tokens' must be a positive int or null; got {batch_tokens!r}")
    # ``batch_size`` and ``batch_tokens`` are per process: the sampler draws global batches of that many times
    # the processes, which ShardedBatches splits.
    world = info.world_size
    sampler = ShardedBatches(
        LengthBucketSampler(lengths, batch_size * world, shuffle=shuffle, seed=seed,
                            batch_tokens=None if batch_tokens is None else batch_tokens * world),
        info.rank, world, even,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=int(workers),
        worker_init_fn=loader_worker_init if workers else None, pin_memory=info.device.type == "cuda",
        persistent_workers=False,
    )
    return loader, sampler


def steps_per_epoch(n_batches: int, grad_accum: int) -> int:
    """Optimizer steps in an epoch of ``n_batches`` micro-batches."""
    return max(1, math.ceil(n_batches / grad_accum))
