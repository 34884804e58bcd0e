"""The training loop behind ``evmamba train``: config, data, model, epochs, checkpoints and the selected model.

The run folder receives the resolved ``config.yaml``, ``metrics.csv`` and ``metrics.jsonl``, ``curves.png``
(redrawn at most every :data:`CURVES_EVERY_S` seconds and after the last epoch), ``last.pt`` (full training
state, written after every epoch), ``best.pt`` (best validation accuracy, when there is a validation split),
``epoch_NNN.pt`` (with ``train.save_every``) and ``model.pt``: the weights of the selected model -- best on
validation if there is a validation split, else the last. A resumed run
continues from a full checkpoint exactly where it stopped, with the config saved in it (overrides still
apply); the data must still have the checkpoint's classes and sensor size.

The whole config is checked first (:func:`evmamba.training.sections.check_config`); a token-model config
with neither a ``binning`` nor a ``model`` section gets the settings it leaves out chosen from the data
(:mod:`evmamba.training.auto`). Before the first step, the peak memory of the largest batches is estimated
and a run that would not fit stops with an error naming the setting to lower (:mod:`evmamba.training.memory`).
One process per GPU under ``torchrun`` trains data-parallel (:mod:`evmamba.training.distributed`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ..core.config import load_config, save_config, to_container
from ..model.checkpoint import check_same_data, export_model, find_checkpoint, load_checkpoint, save_checkpoint
from ..model.classifier import EventClassifier
from . import distributed as ddp
from .auto import auto_enabled, resolve_config
from .data import build_data, make_loader, model_type, section, steps_per_epoch
from .ema import WeightAverage
from .memory import available_memory_bytes, check_training_memory, largest_batch
from .metrics import MetricsLogger
from .models import build_model, evaluate_loader, forward_loss, to_device
from .optim import build_optimizer, build_scheduler
from .plots import plot_training_curves
from .reproducibility import rng_state, seed_everything, set_rng_state
from .sections import check_config
from .settings import train_settings

DEFAULT_CONFIG = "synthetic"
# curves.png is redrawn after the first epoch, then at most this often, and after the last: matplotlib takes
# 0.2-0.5 s a figure on a CPU core, which on a GPU was a tenth of a short epoch's wall time.
CURVES_EVERY_S = 30.0


@dataclass(frozen=True)
class TrainResult:
    """Where a run went and what its selected model scored on the test split."""

    run_dir: Path
    test_accuracy: float
    n_test: int
    selected: str  # "last epoch" or "best validation epoch N"


def _carry_best(source: Path, run_dir: Path, best: dict[str, Any]) -> None:
    """Resuming into a new folder: bring along the source run's best.pt if it is the resumed run's best."""
    src, dst = source / "best.pt", run_dir / "best.pt"
    if best["epoch"] > 0 and src.is_file() and src.resolve() != dst.resolve():
        ckpt = load_checkpoint(src)
        if ckpt["epoch"] == best["epoch"]:
            save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "version")}, dst)


def train(
    config: str | os.PathLike = DEFAULT_CONFIG,
    overrides: Sequence[str] = (),
    *,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the model of a config (a name in the configs folder or a YAML path, with ``key.sub=value``
    ``overrides``) into the run folder ``out`` (default ``runs/<config>-<date>-<time>``), or continue the run
    of ``resume`` (a run folder or a full checkpoint); ``device`` overrides ``train.device``; ``force``
    rebuilds the token caches; ``progress`` shows progress bars (main process only). Prints one line per
    epoch and, last, the test accuracy of the selected model. Returns where it went and what it scored.
    """
    # ---- config, run folder, process group
    resumed = None
    if resume:
        ckpt_path = find_checkpoint(resume, "last.pt")
        resumed = load_checkpoint(ckpt_path, need_training_state=True)
        from omegaconf import OmegaConf

        cfg = OmegaConf.merge(OmegaConf.create(resumed["config"]), OmegaConf.from_dotlist(list(overrides)))
        run_dir = Path(out) if out else ckpt_path.parent
    else:
        cfg = load_config(config, overrides)
        stem = Path(str(config)).stem
        run_dir = Path(out) if out else Path("runs") / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    check_config(cfg)  # every section and key, before any work
    tc = train_settings(cfg)
    info = ddp.setup(device or tc["device"])
    device, main = info.device, info.is_main
    progress = main and progress
    if resumed is None and auto_enabled(cfg):  # settings the config leaves out, chosen from the data
        cfg = resolve_config(cfg, progress=progress, echo=print if main else None,
                             available_bytes=available_memory_bytes(device))
        check_config(cfg)
        tc = train_settings(cfg)
    seed_everything(int(tc["seed"]))

    # ---- data, model, optimizer
    data = build_data(cfg, info, progress=progress, force=bool(force))
    if resumed is not None:
        check_same_data(resumed["data"], data.info, ckpt_path)
    model = build_model(cfg, data.info).to(device)
    workers, budget = int(tc["workers"]), tc["batch_tokens"]
    train_loader, train_batches = make_loader(data.train, data.lengths["train"], tc["batch_size"], data.collate,
                                              shuffle=True, seed=tc["seed"], info=info, workers=workers,
                                              batch_tokens=budget)
    eval_loader = lambda ds, key: make_loader(ds, data.lengths[key], tc["eval_batch_size"], data.collate,  # noqa: E731
                                              shuffle=False, seed=0, info=info, workers=workers, even=False,
                                              batch_tokens=budget)
    val_loader = eval_loader(data.val, "val")[0] if data.val is not None else None
    test_loader, test_batches = eval_loader(data.test, "test")
    if isinstance(model, EventClassifier):  # the estimate, and a clear error instead of running out of memory
        evals = [largest_batch(list(test_batches), data.lengths["test"])]
        if val_loader is not None:
            evals.append(largest_batch(list(val_loader.batch_sampler), data.lengths["val"]))
        check_training_memory(model, largest_batch(list(train_batches), data.lengths["train"]),
                              max(evals, key=lambda bl: bl[0] * bl[1]), tc, device,
                              echo=print if main else None)
    optimizer = build_optimizer(model, tc)
    accum, epochs = tc["grad_accum"], tc["epochs"]
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch(len(train_loader), accum), epochs)
    start_epoch, step, best = 0, 0, {"metric": "val_accuracy", "value": -1.0, "epoch": 0}
    ema = WeightAverage(model, tc["ema_decay"]) if tc["ema_decay"] else None
    if resumed is not None:
        # With an average, "model" holds the averaged weights (what is evaluated and shipped) and
        # "trained_model" the weights the optimizer works on.
        model.load_state_dict(resumed.get("trained_model", resumed["model"]))
        if ema is not None:
            ema.load(resumed["model"], resumed.get("ema_updates", resumed["step"]))
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        set_rng_state(resumed["rng"])
        start_epoch, step = int(resumed["epoch"]), int(resumed["step"])
        best = resumed.get("best") or best
    if start_epoch >= epochs:
        raise ValueError(f"{ckpt_path}: the run already has its {epochs} epochs; resume with train.epochs=N for more")
    net = ddp.wrap(model, info)

    logger = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        logger = MetricsLogger(run_dir, resume_epoch=start_epoch if resumed is not None else None)
        if resumed is not None:
            _carry_best(ckpt_path.parent, run_dir, best)
        n_params = sum(p.numel() for p in model.parameters())
        sizes = (
            f"{len(data.train)} train"
            + (f" / {len(data.val)} val" if data.val is not None else "")
            + f" / {len(data.test)} test"
        )
        print(f"{section(cfg, 'dataset').get('name')}: {sizes} samples, {data.info.n_classes} classes; "
              f"{type(model).__name__} with {n_params:,} parameters on {device}"
              f"{f' x {info.world_size} processes' if info.enabled else ''}; run folder {run_dir}"
              f"{f' (resumed after epoch {start_epoch})' if resumed is not None else ''}", flush=True)
        if ema is not None:
            print(f"validation, test and model.pt use the moving average of the weights (train.ema_decay "
                  f"{ema.decay:g}: about {round(1 / (1 - ema.decay))} optimizer steps)", flush=True)

    def checkpoint_state(epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        state = {
            "model": model.state_dict(), "model_type": model_type(cfg), "model_config": model.config,
            "data": data.info.to_dict(), "config": to_container(cfg), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rng_state(), "epoch": epoch, "step": step,
            "best": dict(best), "metrics": metrics,
        }
        if ema is not None:  # the average is the model; the trained weights are training state
            state.update(model=ema.state_dict(), trained_model=state["model"], ema_updates=ema.updates)
        return state

    def evaluate(loader) -> tuple[float, float, int]:
        # The bare model, not the DDP wrapper: processes may hold different numbers of evaluation batches,
        # and a wrapped forward may issue collectives (buffer broadcasts) that the others would never join.
        with ema.swapped_into(model) if ema is not None else contextlib.nullcontext():
            totals = evaluate_loader(model, loader, device, tc["amp"])
        loss, correct, n = ddp.all_reduce_sum(list(totals.values()), info)
        return loss / max(n, 1), correct / max(n, 1), int(n)

    # ---- the loop
    from tqdm.auto import tqdm

    test_acc, test_n, selected_test = math.nan, 0, None
    curves_drawn = -math.inf
    for epoch in range(start_epoch, epochs):
        train_batches.set_epoch(epoch)
        if hasattr(data.train, "set_epoch"):
            data.train.set_epoch(epoch)
        net.train()
        t0 = time.perf_counter()
        loss_sum, correct_sum, seen, tokens, norm_sum, n_updates = 0.0, 0, 0, 0, 0.0, 0
        n_batches = len(train_loader)
        # Each process's share of each global batch: weights its mean loss so that DDP's average of the
        # processes' gradients is the gradient of the global batch's mean loss (1.0 in one process).
        shares = train_batches.shares()
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=False)
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(train_loader):
            batch = to_device(batch, device)
            update = (i + 1) % accum == 0 or i + 1 == n_batches
            # Gradients are averaged over processes only on the micro-batch that ends an accumulation.
            sync = contextlib.nullcontext() if (update or not info.enabled) else net.no_sync()
            with sync:
                loss, correct, b = forward_loss(net, batch, device, tc["amp"], tc["label_smoothing"])
                (loss * shares[i] / accum).backward()
            if update:
                clip = tc["grad_clip"] or math.inf
                norm_sum += float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model)
                optimizer.zero_grad(set_to_none=True)
                step, n_updates = step + 1, n_updates + 1
            loss_sum, correct_sum, seen = loss_sum + float(loss.detach()) * b, correct_sum + int(correct), seen + b
            tokens += int(batch["lengths"].sum()) if "lengths" in batch else 0
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct_sum / seen:.3f}")
            if update and step % tc["log_every"] == 0:  # every process: the loss is the global batch's
                step_loss, step_n = ddp.all_reduce_sum([float(loss.detach()) * b, b], info)
                if main:
                    logger.log_step({"epoch": epoch + 1, "step": step, "loss": step_loss / step_n,
                                     "lr": scheduler.get_last_lr()[0]})
        bar.close()
        seconds = time.perf_counter() - t0
        loss_sum, correct_sum, seen, tokens = ddp.all_reduce_sum([loss_sum, correct_sum, seen, tokens], info)

        row: dict[str, Any] = {
            "epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
            "train_loss": loss_sum / seen, "train_accuracy": correct_sum / seen,
            "grad_norm": norm_sum / max(n_updates, 1), "epoch_seconds": seconds,
            "samples_per_second": seen / seconds, "tokens_per_second": tokens / seconds,
        }
        if val_loader is not None:
            row["val_loss"], row["val_accuracy"], _ = evaluate(val_loader)
        last = epoch + 1 == epochs
        if last or (tc["test_every"] and (epoch + 1) % tc["test_every"] == 0):
            row["test_loss"], test_acc, test_n = evaluate(test_loader)
            row["test_accuracy"] = test_acc
        # Best = highest validation accuracy, ties broken by the lower validation loss: a small validation
        # set often ties (every epoch at 100 %), and the first of the ties is usually undertrained.
        improved = val_loader is not None and (row["val_accuracy"], -row["val_loss"]) > (
            best["value"], -best.get("loss", float("inf")))
        if improved:
            best = {"metric": "val_accuracy", "value": row["val_accuracy"], "loss": row["val_loss"], "epoch": epoch + 1}
            selected_test = row.get("test_accuracy")  # None: not measured at this epoch
        if main:
            logger.log_epoch(row)
            if last or time.monotonic() - curves_drawn >= CURVES_EVERY_S:
                plot_training_curves(logger.epochs, run_dir / "curves.png")
                curves_drawn = time.monotonic()
            state = checkpoint_state(epoch + 1, row)
            save_checkpoint(state, run_dir / "last.pt")
            if improved:
                save_checkpoint(state, run_dir / "best.pt")
            if tc["save_every"] and (epoch + 1) % tc["save_every"] == 0:
                save_checkpoint(state, run_dir / f"epoch_{epoch + 1:03d}.pt")
            parts = [
                f"epoch {epoch + 1}/{epochs}",
                f"loss {row['train_loss']:.4f}",
                f"train acc {row['train_accuracy']:.4f}",
            ]
            parts += [
                f"{k.replace('_accuracy', '')} acc {row[k]:.4f}" for k in ("val_accuracy", "test_accuracy") if k in row
            ]
            parts.append(f"{seconds:.1f} s")
            print(", ".join(parts), flush=True)
        ddp.barrier(info)

    # ---- the selected model: best on validation when its checkpoint is at hand, else the last
    selected, what = None, "last epoch"
    if val_loader is not None and best["epoch"] > 0 and (run_dir / "best.pt").is_file():
        candidate = load_checkpoint(run_dir / "best.pt")
        if candidate["epoch"] == best["epoch"]:  # not a stale file from another run
            selected, what = candidate, f"best validation epoch {best['epoch']}"
    if selected is not None and best["epoch"] != epochs:
        if selected_test is None:  # the test split was not evaluated at that epoch
            model.load_state_dict(selected["model"])
            ema = None  # the selected weights (averaged or not) are now the model's
            _, selected_test, test_n = evaluate(test_loader)
        test_acc = selected_test
    if main:
        export_model(selected or load_checkpoint(run_dir / "last.pt"), run_dir / "model.pt")
        logger.close()
        print(f"test accuracy: {test_acc:.4f} ({round(test_acc * test_n)}/{test_n} samples, {what}; "
              f"model saved to {run_dir / 'model.pt'})", flush=True)
    ddp.cleanup(info)
    return TrainResult(run_dir, float(test_acc), int(test_n), what)


__all__ = ["DEFAULT_CONFIG", "TrainResult", "train"]
