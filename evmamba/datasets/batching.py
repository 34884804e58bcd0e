"""Batches: collation with right padding, a length-bucketing batch sampler, and its split over processes.

A *token dataset* is anything with ``len()`` and ``ds[i] -> (sequence, label)`` where ``sequence`` is a
:class:`~evmamba.pipeline.binning.TokenSequence` (or anything with ``tokens``, ``counts`` and ``dt`` -- as
attributes, mapping keys, or the first three items of a tuple);
:class:`~evmamba.datasets.wrappers.BinnedDataset` makes one from a dataset of raw event recordings.
:func:`collate` turns a list of items into padded tensors for the model (:func:`collate_frames` for frame
items); :class:`LengthBucketSampler` groups items of similar length so that little of a batch is padding;
:class:`ShardedBatches` splits its global batches over data-parallel processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..pipeline.binning import TokenSequence
from ..pipeline.mixing import as_soft_label


@runtime_checkable
class TokenDataset(Protocol):
    """What :func:`collate` and the training loop need from a dataset."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[TokenSequence, int]: ...


def _field(seq: Any, name: str, position: int):
    if isinstance(seq, Mapping):
        return seq[name]
    if hasattr(seq, name):
        return getattr(seq, name)
    return seq[position]


def collate(batch: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """Stack ``[(sequence, label), ...]`` into right-padded tensors.

    Returns ``tokens`` (B, Lmax) int64, ``counts`` (B, Lmax) float32, ``dt`` (B, Lmax) float32 -- all 0 in
    the padding -- and ``labels`` (B,) int64, ``lengths`` (B,) int64. ``Lmax`` is the longest sequence of
    the batch (0 when all are empty). Sequences with ``surfaces`` ``(L, F)`` (every item of the batch, see
    :class:`~evmamba.datasets.wrappers.WithSurfaces`) also give ``surfaces`` (B, Lmax, F) float32, 0 in the
    padding. Labels are integers, or, for mixed samples
    (:class:`~evmamba.datasets.wrappers.EventMixDataset`), soft labels -- float vectors of class weights --
    for every item of the batch: they come as ``soft_labels`` (B, C) float32, and ``labels`` is then their
    argmax. Raises ``TypeError``/``ValueError`` naming the item and field.
    """
    import torch

    if not isinstance(batch, Sequence) or isinstance(batch, (str, bytes)) or len(batch) == 0:
        raise ValueError(f"collate: batch must be a non-empty list of (sequence, label) items; got {batch!r:.80}")
    columns = []
    surfaces: list[np.ndarray | None] = []
    labels = np.empty(len(batch), np.int64)
    soft: list[np.ndarray] = []
    for i, item in enumerate(batch):
        try:
            seq, label = item
        except (TypeError, ValueError):
            raise ValueError(f"collate: item {i} must be a (sequence, label) pair; got {type(item).__name__}") from None
        try:
            arrays = [np.asarray(_field(seq, name, pos)) for pos, name in enumerate(("tokens", "counts", "dt"))]
        except (KeyError, IndexError, TypeError):
            raise TypeError(
                f"collate: item {i} sequence needs tokens, counts and dt; got {type(seq).__name__}"
            ) from None
        for name, a in zip(("tokens", "counts", "dt"), arrays):
            if a.ndim != 1:
                raise ValueError(f"collate: item {i} field '{name}' must be 1-D; got shape {a.shape}")
            if a.shape[0] != arrays[0].shape[0]:
                raise ValueError(
                    f"collate: item {i} field '{name}' has length {a.shape[0]}, but 'tokens' has {arrays[0].shape[0]}"
                )
        if arrays[0].size and not np.issubdtype(arrays[0].dtype, np.integer):
            raise TypeError(f"collate: item {i} field 'tokens' must hold integers; got dtype {arrays[0].dtype}")
        labels[i] = _label(label, i, soft)
        surf = seq.get("surfaces") if isinstance(seq, Mapping) else getattr(seq, "surfaces", None)
        if surf is not None:
            surf = np.asarray(surf, np.float32)
            if surf.ndim != 2 or surf.shape[0] != arrays[0].shape[0]:
                raise ValueError(f"collate: item {i} field 'surfaces' must have shape ({arrays[0].shape[0]}, F); "
                                 f"got {surf.shape}")
        surfaces.append(surf)
        columns.append(arrays)
    lengths = np.array([c[0].shape[0] for c in columns], dtype=np.int64)
    lmax = int(lengths.max())
    tokens = np.zeros((len(batch), lmax), np.int64)
    counts = np.zeros((len(batch), lmax), np.float32)
    dt = np.zeros((len(batch), lmax), np.float32)
    for row, (tok, cnt, d) in enumerate(columns):
        n = tok.shape[0]
        tokens[row, :n] = tok
        counts[row, :n] = cnt
        dt[row, :n] = d
    out = {
        "tokens": torch.from_numpy(tokens),
        "counts": torch.from_numpy(counts),
        "dt": torch.from_numpy(dt),
        "labels": torch.from_numpy(labels),
        "lengths": torch.from_numpy(lengths),
    }
    if soft:
        out["soft_labels"] = stack_soft_labels(soft, len(batch), "collate")
    given = [s is not None for s in surfaces]
    if any(given):
        if not all(given) or len({s.shape[1] for s in surfaces}) != 1:
            raise ValueError("collate: either every item of a batch has 'surfaces' of one width F, or none has")
        padded = np.zeros((len(batch), lmax, surfaces[0].shape[1]), np.float32)
        for row, surf in enumerate(surfaces):
            padded[row, :surf.shape[0]] = surf
        out["surfaces"] = torch.from_numpy(padded)
    return out


def _label(label, i: int, soft: list) -> int:
    """The integer label of item ``i``; a soft label is appended to ``soft`` and its argmax returned."""
    import torch

    vector = as_soft_label(label, f"collate: item {i} field 'label'")
    if vector is not None:
        soft.append(vector)
        return int(np.argmax(vector))
    if isinstance(label, torch.Tensor):
        label = label.item() if label.numel() == 1 else label
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise TypeError(f"collate: item {i} field 'label' must be an integer or a soft label; got {label!r}")
    return int(label)


def stack_soft_labels(soft: Sequence[np.ndarray], batch_size: int, source: str):
    """``(B, C)`` float32 tensor of the soft labels of a batch; every item must have one, of one length."""
    import torch

    if len(soft) != batch_size:
        raise ValueError(f"{source}: {len(soft)} of {batch_size} items have soft (mixed) labels; a batch takes "
                         "integer labels or soft labels, not both")
    widths = {v.shape[0] for v in soft}
    if len(widths) != 1:
        raise ValueError(f"{source}: soft labels of different lengths {sorted(widths)} in one batch")
    return torch.from_numpy(np.stack(soft))


class LengthBucketSampler:
    """Batches of indices whose sequences have similar lengths; use as ``DataLoader(batch_sampler=...)``.

    With ``shuffle``: the indices are shuffled, cut into pools of ``batch_size * pool_batches``, each pool is
    sorted by length and cut into batches, and the batch order is shuffled -- all from a generator seeded
    with ``(seed, epoch)``, so the same seed and epoch give the same batches (call :meth:`set_epoch`).
    Without: batches of the length-sorted dataset, in order.

    Batches by count (``batch_tokens`` None): ``batch_size`` indices each; only the last batch can be
    smaller, and ``drop_last`` drops it.

    Batches by a token budget (``batch_tokens`` an int): the length-sorted indices are cut greedily so that
    every batch has ``size * longest length <= batch_tokens`` -- the padded batch the model sees -- and at
    most ``batch_size`` indices. Short sequences then travel in large batches and long ones in small
    batches, so memory per batch stays bounded. A sequence longer than the budget on its own gets a batch
    of its own (crop long sequences, e.g. with ``train.max_tokens``, to keep every batch under the budget).
    The number of batches can differ a little from epoch to epoch; ``len()`` is that of the current epoch.
    ``drop_last`` is not available with a budget.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        pool_batches: int = 50,
        batch_tokens: int | None = None,
    ) -> None:
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or (lengths.size and not np.issubdtype(lengths.dtype, np.integer)):
            raise ValueError(
                "LengthBucketSampler: argument 'lengths' must be a 1-D sequence of integers; "
                f"got {lengths.dtype} {lengths.shape}"
            )
        for name, v in (("batch_size", batch_size), ("pool_batches", pool_batches)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"LengthBucketSampler: argument '{name}' must be an integer >= 1; got {v!r}")
        if batch_tokens is not None:
            bad = isinstance(batch_tokens, (bool, np.bool_)) or not isinstance(batch_tokens, (int, np.integer))
            if bad or batch_tokens < 1:
                raise ValueError("LengthBucketSampler: argument 'batch_tokens' must be an integer >= 1 or None; "
                                 f"got {batch_tokens!r}")
            if drop_last:
                raise ValueError("LengthBucketSampler: drop_last is only available for batches by count "
                                 "(batch_tokens=None)")
        self.lengths = lengths.astype(np.int64)
        self.batch_size = int(batch_size)
        self.batch_tokens = None if batch_tokens is None else int(batch_tokens)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.pool_batches = int(pool_batches)
        self.epoch = 0
        self._memo: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = self.lengths.size
        if self.batch_tokens is not None:
            return len(self.batches())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        """Cut indices sorted by length into batches (by count, or by the token budget)."""
        bs = self.batch_size
        if self.batch_tokens is None:
            return [order[i:i + bs].tolist() for i in range(0, order.size, bs)]
        out: list[list[int]] = []
        batch: list[int] = []
        for i, length in zip(order.tolist(), self.lengths[order].tolist(), strict=True):
            # Sorted ascending: the newcomer is the batch's longest sequence.
            if batch and (len(batch) == bs or (len(batch) + 1) * length > self.batch_tokens):
                out.append(batch)
                batch = []
            batch.append(i)
        if batch:
            out.append(batch)
        return out

    def batches(self) -> list[list[int]]:
        """This epoch's batches (lists of dataset indices)."""
        if self._memo is not None and self._memo[0] == self.epoch:
            return [list(b) for b in self._memo[1]]
        n = self.lengths.size
        bs = self.batch_size
        if not self.shuffle:
            out = self._cut(np.argsort(self.lengths, kind="stable"))
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            perm = rng.permutation(n)
            pool = bs * self.pool_batches  # a multiple of bs: only the very last batch can be short
            out = []
            for start in range(0, n, pool):
                chunk = perm[start:start + pool]
                out.extend(self._cut(chunk[np.argsort(self.lengths[chunk], kind="stable")]))
            short = out.pop() if self.batch_tokens is None and out and len(out[-1]) < bs else None
            out = [out[i] for i in rng.permutation(len(out))]
            if short is not None:
                out.append(short)
        if self.drop_last and out and len(out[-1]) < bs:
            out.pop()
        self._memo = (self.epoch, out)
        return [list(b) for b in out]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())


def collate_frames(batch) -> dict[str, Any]:
    """``[(frames (T, P, H, W), label), ...]`` -> ``frames`` (B, T, P, H, W) int16, ``labels`` (B,) int64;
    with soft labels (mixed samples) also ``soft_labels`` (B, C) float32, and ``labels`` is their argmax."""
    import torch

    frames = torch.from_numpy(np.stack([np.asarray(f) for f, _ in batch]))
    soft = [v for i, (_, lab) in enumerate(batch)
            if (v := as_soft_label(lab, f"collate_frames: item {i} label")) is not None]
    if soft:
        out_soft = stack_soft_labels(soft, len(batch), "collate_frames")
        return {"frames": frames, "labels": out_soft.argmax(-1), "soft_labels": out_soft}
    labels = torch.tensor([int(lab) for _, lab in batch], dtype=torch.long)
    return {"frames": frames, "labels": labels}


# ------------------------------------------------------------------------------------------ samplers
class ShardedBatches:
    """Global batches of a sampler (e.g. a :class:`~evmamba.datasets.batching.LengthBucketSampler` with batch
    size ``per-process batch x world``), each split over ``world`` processes: process ``rank`` takes items
    ``rank, rank + world, ...`` of every global batch. So ``world`` processes see, step by step, exactly the
    samples one process sees with the global batch size, and with the data-parallel mean of their
    gradients (weighted by :meth:`shares`) take the same optimizer steps. Neighbours in a length-sorted
    global batch go to different processes, so their shares have about the same lengths.

    ``even`` (training, where DDP synchronises every step): every process gets one share of every global
    batch, so a global batch with fewer than ``world`` items (at most the last one) is dropped. Otherwise
    (evaluation) such a batch gives shares to the first processes only, and every sample is seen once.
    """

    def __init__(self, sampler, rank: int = 0, world: int = 1, even: bool = True):
        for name, v, lo in (("rank", rank, 0), ("world", world, 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"ShardedBatches: argument '{name}' must be an int >= {lo}; got {v!r}")
        if rank >= world:
            raise ValueError(f"ShardedBatches: rank {rank} must be below world {world}")
        self.sampler, self.rank, self.world, self.even = sampler, int(rank), int(world), bool(even)
        self._epoch_batches: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _global(self) -> list[list[int]]:
        # The sampler's batches depend only on (seed, epoch); kept per epoch, as len() is asked every step.
        epoch = getattr(self.sampler, "epoch", None)
        if self._epoch_batches is None or self._epoch_batches[0] != epoch or epoch is None:
            batches = [list(b) for b in self.sampler.batches()]
            if self.world > 1 and self.even:
                batches = [b for b in batches if len(b) >= self.world]
            self._epoch_batches = (epoch, batches)
        return self._epoch_batches[1]

    def _mine(self) -> list[list[int]]:
        return [b[self.rank::self.world] for b in self._global() if len(b) > self.rank]

    def shares(self) -> list[float]:
        """Per batch of this process, in order: its size x ``world`` / the global batch's size. Scaling each
        process's mean loss by it makes the average over processes the mean over the global batch, also
        when the global batch does not split evenly (1.0 for every batch that does)."""
        return [len(b[self.rank::self.world]) * self.world / len(b) for b in self._global() if len(b) > self.rank]

    def __len__(self) -> int:
        return len(self._mine())

    def __iter__(self):
        return iter(self._mine())


__all__ = ["LengthBucketSampler", "ShardedBatches", "TokenDataset", "collate", "collate_frames", "stack_soft_labels"]
