"""Memory before training: the estimate of the largest step, what is available, and a clear error instead of
an out-of-memory kill.

:func:`check_training_memory` takes the model and the largest training and evaluation batches of a run
(:func:`largest_batch` over the sampler's batches), estimates their peak with
:mod:`evmamba.model.memory`, prints one line, and raises ``ValueError`` -- naming the setting to lower and by
how much -- when the estimate exceeds the memory available (``train.max_memory_gb``, or what the machine
has free now, less 10 % headroom for everything the estimate does not count).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..model.memory import (
    MemoryEstimate,
    activation_bytes_per_token,
    gb,
    inference_bytes,
    training_step_bytes,
)

HEADROOM = 0.9  # share of the free memory a run may plan to use


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Bytes the process's cgroup may still allocate (limit minus usage), None without a limit."""
    pairs = [("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
             ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")]
    for limit_path, usage_path in pairs:
        try:
            text = Path(limit_path).read_text().strip()
            if text == "max":
                return None
            limit, usage = int(text), int(Path(usage_path).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit >= 1 << 60:  # v1 reports "no limit" as a huge number
            return None
        return max(limit - usage, 0)
    return None


def available_memory_bytes(device=None) -> int | None:
    """Memory a run can still use: on a CUDA device its free memory; on the CPU the smaller of the
    machine's ``MemAvailable`` and the room left under the process's cgroup limit. None when unknown."""
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    candidates = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    if not candidates:
        try:
            import psutil  # optional

            return int(psutil.virtual_memory().available)
        except ImportError:
            return None
    return min(candidates)


def largest_batch(batches: Sequence[Sequence[int]], lengths: np.ndarray) -> tuple[int, int]:
    """``(B, L)`` of the batch with the most padded positions ``B * L`` (``L`` = its longest sequence);
    ``(1, 1)`` for no batches or only empty sequences."""
    lengths = np.asarray(lengths, dtype=np.int64)
    best = (1, 1)
    for batch in batches:
        if len(batch) == 0:
            continue
        longest = int(lengths[np.asarray(batch, dtype=np.int64)].max())
        if longest > 0 and len(batch) * longest > best[0] * best[1]:
            best = (len(batch), longest)
    return best


def _nice_floor(x: float) -> int:
    """``x`` rounded down to two significant digits (197 984 -> 190 000): a value to type into a config."""
    if x < 100:
        return max(int(x), 0)
    scale = 10 ** (len(str(int(x))) - 2)
    return int(x // scale * scale)


def _advice(model, batch: int, length: int, limit: float, fixed: int, settings: Mapping[str, Any]) -> str:
    """What to lower, and to what, so that a training step fits ``limit`` bytes."""
    per_token = activation_bytes_per_token(model, length)
    room = limit - fixed
    if room <= 0:
        return (f"the parameters, gradients and optimizer state alone need {gb(fixed)} GB: choose a smaller model "
                "(model.d_model, model.n_layers, or binning.downsample for a smaller embedding table)")
    fits = _nice_floor(0.95 * room / per_token)  # padded tokens per batch that fit, with a margin
    budget = settings.get("batch_tokens")
    if fits < length:
        crop = settings.get("max_tokens")
        return (f"even one sequence of {length:,} tokens needs more: set train.max_tokens to at most {fits:,} "
                f"(now {f'{int(crop):,}' if crop is not None else 'null'}; a random crop of each training stream)"
                f"{f' and train.batch_tokens to at most {fits:,}' if budget is not None else ''}, or shorten the "
                "streams (a wider binning.bin_us, a larger binning.downsample, or model.input_pool)")
    if budget is not None:
        return f"lower train.batch_tokens from {int(budget):,} to at most {fits:,}"
    return (f"lower train.batch_size from {settings.get('batch_size')} to at most {max(fits // length, 1)}, or set "
            f"train.batch_tokens: {fits:,} (batches by a token budget)")


def check_training_memory(model, train_batch: tuple[int, int], eval_batch: tuple[int, int] | None,
                          settings: Mapping[str, Any], device=None,
                          echo: Callable[[str], None] | None = print) -> tuple[MemoryEstimate, int | None]:
    """Estimate the peak of one training step on ``train_batch`` ``(B, L)`` and of one evaluation forward on
    ``eval_batch``, print one line with ``echo`` and compare with the memory available: ``train.max_memory_gb``
    of ``settings`` (the ``train`` section) when set, else :func:`available_memory_bytes` x 0.9.

    Returns ``(training estimate, limit in bytes or None when unknown)``. Raises ``ValueError`` naming the
    setting to lower and a value that fits when an estimate exceeds the limit.
    """
    est = training_step_bytes(model, *train_batch)
    ev = inference_bytes(model, *eval_batch) if eval_batch is not None else None
    given = settings.get("max_memory_gb")
    if given is not None:
        limit, source = float(given) * 1e9, "train.max_memory_gb"
    else:
        free = available_memory_bytes(device)
        limit, source = (None, "") if free is None else (free * HEADROOM, "90 % of the memory free now")
    where = f"{train_batch[0]} x {train_batch[1]:,} tokens"
    line = f"memory: a training step on the largest batch ({where}) needs about {est.describe()}"
    if ev is not None:
        line += f"; evaluation ({eval_batch[0]} x {eval_batch[1]:,} tokens) about {gb(ev.total)} GB"
    line += f"; limit {gb(limit)} GB ({source})" if limit is not None else "; free memory unknown, not checked"
    if echo is not None:
        echo(line)
    if limit is None:
        return est, None
    if est.total > limit:
        raise ValueError(
            f"memory: a training step on the largest batch ({where}) would need about {est.describe()}, more "
            f"than the {gb(limit)} GB available ({source}); "
            + _advice(model, train_batch[0], train_batch[1], limit, est.fixed, settings)
        )
    if ev is not None and ev.total > limit:
        per_token = (ev.activations + ev.batch) / (eval_batch[0] * eval_batch[1])
        fits = _nice_floor(0.95 * (limit - ev.parameters) / per_token)
        if fits >= eval_batch[1]:
            hint = (f"lower train.eval_batch_size to at most {max(fits // eval_batch[1], 1)}"
                    + (f" or train.batch_tokens to at most {fits:,}" if settings.get("batch_tokens") else ""))
        else:
            hint = ("the longest test stream alone does not fit: shorten the streams (a wider binning.bin_us, a "
                    "larger binning.downsample, or model.input_pool)")
        raise ValueError(
            f"memory: evaluating the largest batch of test streams ({eval_batch[0]} x {eval_batch[1]:,} tokens) "
            f"would need about {ev.describe()}, more than the {gb(limit)} GB available ({source}); {hint}"
        )
    return est, int(limit)


__all__ = ["HEADROOM", "available_memory_bytes", "check_training_memory", "largest_batch"]
