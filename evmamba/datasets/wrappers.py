"""Dataset wrappers: a dataset of recordings or token sequences in, another out, each item a function of
``(seed, epoch, index)`` so that an epoch is the same whether or not a run was resumed, and whatever the
number of loader workers (call ``set_epoch`` at each epoch; every wrapper passes it on).

* :class:`BinnedDataset` -- recordings -> token sequences (augment, then bin);
* :class:`EventMixDataset` -- recordings -> recordings mixed in pairs with soft labels;
* :class:`FrameDataset` -- recordings -> event-count frames (frame models);
* :class:`WithSurfaces` -- token sequences -> token sequences with each token's local surface;
* :class:`IndexedSubset` -- a subset by positions; :class:`TokenCrop` -- random crops of long sequences.

The event-level operations they apply live in :mod:`evmamba.pipeline` (binning, augmentation, mixing,
frames, surfaces); batching them is :mod:`.batching`.
"""

from __future__ import annotations

import numpy as np

from ..core.events import check_sensor_size
from ..pipeline.augment import AugmentConfig, augment_events
from ..pipeline.binning import BinningConfig, TokenSequence, _check_cfg, bin_events
from ..pipeline.mixing import mix_events, soft_label
from ..pipeline.surfaces import SurfaceConfig, SurfacedSequence, token_surfaces

EMPTY_POLICIES = ("error", "keep")

class BinnedDataset:
    """A token dataset over a dataset of recordings: ``base[i] -> (events, label)`` becomes
    ``(bin_events(augment(events)), label)``.

    ``augment`` (training only) draws its randomness from a generator seeded with ``(seed, epoch, index)``,
    so an epoch is reproducible and different epochs differ; call :meth:`set_epoch` at each epoch.
    ``allow_hflip=False`` / ``allow_vflip=False`` declare that left/right or up/down carries meaning for this
    dataset's labels.
    ``empty`` says what an item with no tokens does: ``"error"`` raises ``ValueError`` naming the item,
    ``"keep"`` returns the empty sequence (it collates to length 0).
    """

    def __init__(
        self,
        base,
        sensor_size,
        cfg: BinningConfig,
        *,
        augment: AugmentConfig | None = None,
        allow_hflip: bool = True,
        allow_vflip: bool = True,
        seed: int = 0,
        empty: str = "error",
        source: str = "dataset",
    ) -> None:
        if not hasattr(base, "__getitem__") or not hasattr(base, "__len__"):
            raise TypeError(f"{source}: base must support len() and indexing; got {type(base).__name__}")
        if augment is not None and not isinstance(augment, AugmentConfig):
            raise TypeError(f"{source}: augment must be an AugmentConfig or None; got {type(augment).__name__}")
        if empty not in EMPTY_POLICIES:
            raise ValueError(f"{source}: argument 'empty' must be one of {EMPTY_POLICIES}; got {empty!r}")
        self.base = base
        self.sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
        self.cfg = _check_cfg(cfg, source)
        self.augment = augment if augment is not None and augment.active else None
        self.flips = {"allow_hflip": bool(allow_hflip), "allow_vflip": bool(allow_vflip)}  # for augment_events
        self.seed = int(seed)
        self.empty = empty
        self.source = source
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of this epoch (and of ``base``, when it draws too: an
        :class:`~evmamba.datasets.wrappers.EventMixDataset`)."""
        self.epoch = int(epoch)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[TokenSequence, int]:
        events, label = self.base[index]
        where = f"{self.source}[{index}]"
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            events = augment_events(events, self.sensor_size, self.augment, rng, **self.flips, source=where)
        seq = bin_events(events, self.sensor_size, self.cfg, source=where)
        if seq.num_tokens == 0 and self.empty == "error":
            raise ValueError(f"{where}: the recording gives no tokens (empty, or everything was cropped or filtered)")
        return seq, label


class EventMixDataset:
    """Training recordings, augmented and mixed in pairs: ``base[i] -> (events, soft label)``.

    ``base[i] -> (events, label)`` with integer labels. Item ``i`` is augmented by
    :func:`~evmamba.pipeline.augment.augment_events` with the generator seeded ``(seed, epoch, i)`` (the
    seeding of :class:`~evmamba.datasets.wrappers.BinnedDataset`); then, with probability ``cfg.mix_p``
    drawn from the generator ``(seed, epoch, i, 2)``, a partner ``j`` is drawn from ``partners`` (dataset
    positions of the same split; default all), augmented with the generator ``(seed, epoch, i, 3)`` and
    merged in by :func:`mix_events`. The label is always a float32 vector of ``n_classes`` (default
    ``len(base.classes)``): one-hot for an unmixed item. Everything is a function of ``(seed, epoch, i)``,
    so an epoch is reproducible and resumable; call :meth:`set_epoch` at each epoch.
    """

    def __init__(self, base, sensor_size, cfg: AugmentConfig, *, partners=None, n_classes: int | None = None,
                 seed: int = 0, allow_hflip: bool = True, allow_vflip: bool = True,
                 source: str = "dataset") -> None:
        if not hasattr(base, "__getitem__") or not hasattr(base, "__len__"):
            raise TypeError(f"{source}: base must support len() and indexing; got {type(base).__name__}")
        if not isinstance(cfg, AugmentConfig):
            raise TypeError(f"{source}: cfg must be an AugmentConfig; got {type(cfg).__name__}")
        self.sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
        cfg.check_sensor(self.sensor_size, source)
        if n_classes is None:
            if not hasattr(base, "classes"):
                raise TypeError(f"{source}: give n_classes, or a base with a 'classes' list")
            n_classes = len(base.classes)
        if isinstance(n_classes, (bool, np.bool_)) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
            raise ValueError(f"{source}: argument 'n_classes' must be a positive integer; got {n_classes!r}")
        partners = np.arange(len(base)) if partners is None else np.asarray(partners)
        if partners.ndim != 1 or partners.size == 0 or not np.issubdtype(partners.dtype, np.integer):
            raise ValueError(f"{source}: argument 'partners' must be a non-empty 1-D sequence of sample indices; "
                             f"got {partners.dtype} {partners.shape}")
        if partners.min() < 0 or partners.max() >= len(base):
            raise ValueError(f"{source}: argument 'partners' holds indices outside 0..{len(base) - 1}")
        self.base, self.cfg = base, cfg
        self.partners = partners.astype(np.int64)
        self.n_classes = int(n_classes)
        self.classes = getattr(base, "classes", None)
        self.seed, self.source = int(seed), source
        self.flips = {"allow_hflip": bool(allow_hflip), "allow_vflip": bool(allow_vflip)}  # for augment_events
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation and mixing draws of this epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def _augmented(self, index: int, rng: np.random.Generator, where: str) -> tuple[np.ndarray, int]:
        events, label = self.base[index]
        if (
            isinstance(label, (bool, np.bool_))
            or not isinstance(label, (int, np.integer))
            or not 0 <= label < self.n_classes
        ):
            raise ValueError(f"{where}: label must be an integer in [0, {self.n_classes}); got {label!r}")
        if self.cfg.per_sample:
            events = augment_events(events, self.sensor_size, self.cfg, rng, **self.flips, source=where)
        return events, int(label)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = int(index)
        where = f"{self.source}[{index}]"
        events, label = self._augmented(index, np.random.default_rng([self.seed, self.epoch, index]), where)
        mix_rng = np.random.default_rng([self.seed, self.epoch, index, 2])
        if self.cfg.mix_p and mix_rng.random() < self.cfg.mix_p:
            j = int(self.partners[mix_rng.integers(self.partners.size)])
            other, label_b = self._augmented(j, np.random.default_rng([self.seed, self.epoch, index, 3]),
                                             f"{self.source}[{j}] (mixed into item {index})")
            events, lam = mix_events(events, other, self.sensor_size, mix_rng, mode=self.cfg.mix_mode,
                                     ratio=self.cfg.mix_ratio, replace=self.cfg.mix_replace, source=where)
            return events, soft_label(label, label_b, lam, self.n_classes)
        return events, soft_label(label, label, 0.0, self.n_classes)


class WithSurfaces:
    """``(sequence, label)`` items of ``dataset`` -> ``(SurfacedSequence, label)``: each whole sequence's surfaces
    on the token grid ``grid`` (computed per item, after any augmentation and before any crop, so a cropped
    window keeps the context of the tokens before it). Passes ``set_epoch`` through."""

    def __init__(self, dataset, grid, cfg: SurfaceConfig):
        self.dataset, self.grid, self.cfg = dataset, tuple(int(v) for v in grid), cfg

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def source(self, i: int) -> str | None:
        return _source(self.dataset, i)

    def __getitem__(self, i):
        seq, label = self.dataset[i]
        return SurfacedSequence(seq.tokens, seq.counts, seq.dt, seq.t, token_surfaces(seq, self.grid, self.cfg)), label


# ------------------------------------------------------------------------------------------ wrappers
def _source(dataset, i: int) -> str | None:
    """Where item ``i`` of a wrapped dataset came from (file name or generator id), or None if it does not say:
    the wrappers' ``source(i)`` asks the dataset they wrap."""
    source = getattr(dataset, "source", None)
    return str(source(i)) if callable(source) else None


class IndexedSubset:
    """``dataset[indices[i]]`` as item ``i``; passes :meth:`set_epoch` through."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i):
        return self.dataset[int(self.indices[i])]

    def source(self, i: int) -> str | None:
        return _source(self.dataset, int(self.indices[i]))

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def window(self, i, start: int, stop: int | None):
        """``dataset.window(indices[i], start, stop)`` (a :class:`~evmamba.datasets.cache.TokenCache`'s)."""
        return self.dataset.window(int(self.indices[i]), start, stop)


class TokenCrop:
    """Crop each item's token sequence to a random window of at most ``max_tokens`` (training only); the
    window is drawn from ``(seed, epoch, index)``.

    With ``lengths`` (tokens of each item, known ahead) the dataset must have ``window(i, start, stop)``
    (a token cache or an :class:`IndexedSubset` of one): only the window is read, so a long recording
    costs its crop, not its length, in reading time and memory. The windows are the same either way."""

    def __init__(self, dataset, max_tokens: int, seed: int, lengths=None):
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"config: key 'train.max_tokens' must be a positive int or null; got {max_tokens!r}")
        if lengths is not None:
            lengths = np.asarray(lengths, dtype=np.int64)
            if lengths.shape != (len(dataset),):
                raise ValueError(
                    f"TokenCrop: 'lengths' must have one entry per item ({len(dataset)}); got {lengths.shape}"
                )
            if not hasattr(dataset, "window"):
                raise TypeError(f"TokenCrop: with 'lengths', the dataset ({type(dataset).__name__}) needs window()")
        self.dataset, self.max_tokens, self.seed, self.epoch = dataset, max_tokens, int(seed), 0
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def _start(self, i, n: int) -> int:
        return int(np.random.default_rng([self.seed, self.epoch, int(i), 1]).integers(0, n - self.max_tokens + 1))

    def __getitem__(self, i):
        if self.lengths is not None:
            n = int(self.lengths[i])
            start = self._start(i, n) if n > self.max_tokens else 0
            return self.dataset.window(i, start, start + self.max_tokens)
        seq, label = self.dataset[i]
        n = seq.num_tokens
        if n <= self.max_tokens:
            return seq, label
        start = self._start(i, n)
        return type(seq)(*(a[start:start + self.max_tokens] for a in seq)), label


class FrameDataset:
    """Recordings -> ``(frames (T, P, H, W) int16, label)`` with ``T = n_time_bins`` equal time slices.

    ``downsample`` k maps pixel x to ``x // k`` (as the token binner does). ``augment`` (an
    :class:`~evmamba.pipeline.augment.AugmentConfig`, training only) is applied to the events first, with a
    generator seeded by ``(seed, epoch, index)``. Without augmentation, frames are kept in memory after
    the first access when ``memoize``. A ``base`` that gives soft labels (an
    :class:`~evmamba.datasets.wrappers.EventMixDataset`) passes them on, and :meth:`set_epoch` reaches it.
    """

    def __init__(self, base, n_time_bins: int, downsample: int = 1, augment=None, seed: int = 0,
                 allow_hflip: bool = True, memoize: bool = True, allow_vflip: bool = True):
        from ..core.events import check_sensor_size

        if isinstance(n_time_bins, bool) or not isinstance(n_time_bins, int) or n_time_bins < 1:
            raise ValueError(f"config: key 'frames.n_time_bins' must be a positive int; got {n_time_bins!r}")
        if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1:
            raise ValueError(f"config: key 'frames.downsample' must be a positive int; got {downsample!r}")
        self.base = base
        self.sensor_size = check_sensor_size(base.sensor_size, "frames: sensor_size")
        w, h, p = self.sensor_size
        self.k = downsample
        self.frame_size = (-(-w // downsample), -(-h // downsample), p)
        self.n_time_bins = n_time_bins
        self.augment = augment if augment is not None and augment.active else None
        self.seed, self.epoch = int(seed), 0
        self.flips = {"allow_hflip": bool(allow_hflip), "allow_vflip": bool(allow_vflip)}  # for augment_events
        self.memo: dict[int, tuple[np.ndarray, int]] | None = {} if memoize and self.augment is None else None

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def source(self, i: int) -> str | None:
        return _source(self.base, i)

    def frames(self, events: np.ndarray, source: str = "events") -> np.ndarray:
        """``(T, P, H', W')`` int16 counts of one recording (all zeros for an empty one)."""
        from ..pipeline.frames import to_frames

        if self.k > 1:
            events = events.copy()
            events["x"] //= self.k
            events["y"] //= self.k
        return to_frames(events, self.frame_size, n_time_bins=self.n_time_bins, source=source)

    def __getitem__(self, i):
        i = int(i)
        if self.memo is not None and i in self.memo:
            return self.memo[i]
        events, label = self.base[i]
        if self.augment is not None:
            from ..pipeline.augment import augment_events

            rng = np.random.default_rng([self.seed, self.epoch, i])
            events = augment_events(events, self.sensor_size, self.augment, rng, **self.flips, source=f"frames[{i}]")
        item = self.frames(events, source=f"frames[{i}]"), label if isinstance(label, np.ndarray) else int(label)
        if self.memo is not None:
            self.memo[i] = item
        return item


__all__ = ["EMPTY_POLICIES", "BinnedDataset", "EventMixDataset", "FrameDataset", "IndexedSubset", "TokenCrop",
           "WithSurfaces"]
