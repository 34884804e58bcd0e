"""Settings chosen from the data: a config whose only section is ``dataset`` trains on any sensor.

When a token-model config has neither a ``binning`` nor a ``model`` section (or sets ``train.auto: true``),
:func:`resolve_config` looks at the data first and fills in every ``binning``, ``model`` and ``train`` key
the config does not give; keys the config gives always win. It prints one line per decision with its
reason, and the run saves the resolved config (with ``train.auto: false``, so that it reproduces the run
without looking again).

What is looked at (:func:`describe_dataset`): the sensor size, and for a sample of the training recordings
(up to :data:`SAMPLE_RECORDINGS`, spread evenly over the split, read with a progress bar) the events, the
duration and the number of tokens at each bin width of :data:`BIN_LADDER_US` (counted exactly, see
:mod:`evmamba.pipeline.token_counts`).

What is chosen, in order (the constants below hold the thresholds):

* ``dataset.test_fraction`` -- a folder dataset without train/test splits holds out 20 % of every class;
* ``binning.downsample`` -- 1 on a camera of at most :data:`FULL_RESOLUTION_SIDE` pixels a side, else the
  smallest factor that leaves at most :data:`MAX_CELLS` cells on each side (34x34 -> 1, 128x128 -> 4,
  304x240 -> 10, 1280x720 -> 40), or at most :data:`MAX_CHANNELS` channels of 1-D spike data (700 -> 1);
  ``binning.polarity`` true;
* ``binning.bin_us`` -- the finest width of the ladder whose median token count per recording is at most
  :data:`TARGET_TOKENS` (0, one token per event, when the recordings are short enough already), but no
  wider than an eighth of the median duration (:data:`MIN_BINS`); for dense data that no allowed width
  brings to the target, the finest width within twice the widest one's count (:data:`DENSE_SLACK`);
* ``binning.time_unit`` -- ``ms``, or ``s`` for recordings longer than 100 s, ``us`` for ones shorter
  than 1 ms;
* the model (:func:`default_model_section`) -- its size from the number of training recordings, an input
  pooling that brings the median sequence seen by the first layer to at most :data:`LAYER_TOKENS`, a
  pooling by 4 after the first layer when that is still long, and event-mode time constants spanning
  three decades, the slowest the power of ten that covers half a median recording;
* ``train`` -- ``batch_size`` (at most 32 recordings, at least 4, about 6 batches an epoch), a crop
  ``max_tokens`` of very long training streams (the 90th percentile of the token counts, at least twice the median),
  ``batch_tokens`` (a batch of median-length streams holds ``batch_size`` of them, within
  :data:`MEMORY_SHARE` of the memory available), ``epochs`` (about :data:`TARGET_STEPS` optimizer steps),
  ``lr``, warmup, ``ema_decay`` (the moving average of the weights that is validated and shipped spans about
  a tenth of the run's steps: :data:`EMA_SHARE`), ``val_fraction`` (10 % from 500 training recordings on) and
  ``test_every``;
* ``augment`` -- only when the config has no ``augment`` section at all: on a camera (a 2-D sensor) random
  translation by up to :data:`AUGMENT_SHIFT_SHARE` of the smaller side, rotation by up to 15 degrees, zoom
  by 0.9-1.1 and a 20 % event drop (:data:`CAMERA_AUGMENT`, chosen on validation: docs/training.md); on 1-D
  spike data, event-level mixing of two training recordings with mixed labels (:data:`SPIKE_AUGMENT`, chosen
  on validation on a 1-D stand-in). An ``augment`` section, even an empty one, is the config's own choice and
  is kept as it is.

The model's embedding is chosen in one place, :data:`DEFAULT_EMBEDDING` inside
:func:`default_model_section`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..model.checkpoint import TOKEN_MODEL
from ..pipeline.augment import AugmentConfig
from ..pipeline.binning import TIME_UNITS_US, BinningConfig, vocab_size
from ..pipeline.surfaces import SurfaceConfig
from .data import model_type, section

#: Candidate time-bin widths, µs (0: one token per event).
BIN_LADDER_US = (0, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
                 1_000_000, 2_000_000, 5_000_000, 10_000_000)
SAMPLE_RECORDINGS = 200  # recordings read to describe a dataset
#: Token-grid cells on each side of a camera larger than FULL_RESOLUTION_SIDE. 32 was chosen against 64 on
#: validation on a 304x240 stand-in (docs/training.md, "Seventh round"): the coarser grid merges more events
#: per token, so the first layer needs less pooling and the context stage stays on.
MAX_CELLS = 32
FULL_RESOLUTION_SIDE = 64  # cameras up to this many pixels a side keep every pixel (N-MNIST, POKER-DVS)
MAX_CHANNELS = 1024  # token channels of 1-D spike data
TARGET_TOKENS = 4096  # median tokens per recording the bin width aims at (at most)
MIN_BINS = 8  # time bins in a median recording (at least): a bin is at most an eighth of it
DENSE_SLACK = 2.0  # dense data: the finest bin within this factor of the widest allowed bin's token count
LAYER_TOKENS = 512  # median sequence length the first layer should see (at most)
#: Optimizer steps of a run. 1 000 was chosen against 500 on validation on two stand-ins (a 304x240 camera and a
#: 68-channel 1-D sensor, docs/training.md "Seventh round"): at 500 every run was still improving at its end.
TARGET_STEPS = 1000
MIN_EPOCHS, MAX_EPOCHS = 10, 80  # train.epochs stays within these, whatever TARGET_STEPS asks
EMA_SHARE = 0.1  # train.ema_decay: the average of the weights spans about this share of the run's steps
MEMORY_SHARE = 0.5  # share of the available memory the training batches may plan to use
FOLDER_TEST_FRACTION = 0.2
#: The embedding a chosen model uses ("table", "factorised" or "surface"; see evmamba.model.embedding). The
#: one place to switch the default embedding of dataset-only configs. "surface" (each token's local time
#: surface through a shared MLP, plus coarse position) generalised best on validation (docs/training.md).
DEFAULT_EMBEDDING = "surface"
SURFACE_RADIUS = 2  # the surface patch: (2 r + 1) x (2 r + 1) cells (x 1 on spike data)
#: The context stage of dataset-only configs (evmamba.model.context; None: off): a second, learned level of
#: spatial features over a 5 x 5 grid of neighbours 2 cells apart, decaying 2.5x slower than the surface. It
#: lifted validation and test accuracy on N-MNIST and POKER-DVS (docs/training.md, "Results with the context
#: stage"); it costs about 2-3x the CPU time of a training step of a small model.
DEFAULT_CONTEXT = {"radius": 2, "dilation": 2, "channels": 16}
CONTEXT_TAU_OVER_SURFACE = 2.5
#: The context stage runs on every token before the input pooling, so on long streams (heavy pooling) it
#: dominates the cost of a step: on the ten DVS Gesture trials (42 k tokens, pooling by 32) it made CPU
#: training about 5x slower. Dataset-only configs turn it on up to this input pooling.
CONTEXT_MAX_INPUT_POOL = 8


# ------------------------------------------------------------------------------------------ the data
@dataclass
class DataStats:
    """What :func:`describe_dataset` found in a dataset's training split.

    ``events`` and ``durations_us`` (int64) hold one value per sampled recording; ``tokens`` is
    ``(sampled, len(bin_widths))``: tokens per sampled recording at each width under ``binning`` (whose own
    ``bin_us`` is ignored).
    """

    name: str
    sensor_size: tuple[int, int, int]
    n_recordings: int
    n_classes: int
    events: np.ndarray
    durations_us: np.ndarray
    bin_widths: tuple[int, ...]
    tokens: np.ndarray
    binning: BinningConfig = field(default_factory=BinningConfig)

    @property
    def sampled(self) -> int:
        return int(self.events.shape[0])

    @property
    def one_d(self) -> bool:
        """Spike data: one row of channels (``x``), e.g. SHD's (700, 1, 1)."""
        return self.sensor_size[1] == 1

    def tokens_at(self, bin_us: int) -> np.ndarray:
        """Tokens per sampled recording at width ``bin_us`` (one of ``bin_widths``)."""
        if bin_us not in self.bin_widths:
            raise ValueError(f"no token counts for bin_us={bin_us}; counted for {list(self.bin_widths)}")
        return self.tokens[:, self.bin_widths.index(bin_us)]


def spread_indices(n: int, k: int) -> np.ndarray:
    """Up to ``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    if n <= k:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def describe_dataset(dataset, binning: BinningConfig, bin_widths=BIN_LADDER_US,
                     max_recordings: int = SAMPLE_RECORDINGS, progress: bool = True) -> DataStats:
    """Read up to ``max_recordings`` recordings of ``dataset`` (an event dataset, spread evenly over it) and
    count events, duration and tokens at each of ``bin_widths`` under ``binning``. Empty recordings count
    as 0 events, 0 µs and 0 tokens."""
    from tqdm.auto import tqdm

    from ..pipeline.token_counts import token_counts

    if len(dataset) == 0:
        raise ValueError(f"{getattr(dataset, 'name', 'dataset')}: the training split has no recordings")
    sensor = tuple(int(v) for v in dataset.sensor_size)
    chosen = spread_indices(len(dataset), max_recordings)
    widths = tuple(int(b) for b in bin_widths)
    events, durations, tokens = [], [], []
    desc = f"{getattr(dataset, 'name', 'dataset')}: looking at {chosen.size} of {len(dataset)} recordings"
    for i in tqdm(chosen, desc=desc, unit="rec", disable=not progress, leave=False):
        ev, _ = dataset[int(i)]
        events.append(int(ev.size))
        durations.append(int(ev["t"][-1] - ev["t"][0]) if ev.size else 0)
        tokens.append(token_counts(ev, sensor, binning, widths, source=str(dataset.source(int(i)))))
    return DataStats(name=str(getattr(dataset, "name", "dataset")), sensor_size=sensor,
                     n_recordings=len(dataset), n_classes=len(dataset.classes),
                     events=np.asarray(events, np.int64), durations_us=np.asarray(durations, np.int64),
                     bin_widths=widths, tokens=np.asarray(tokens, np.int64).reshape(len(events), len(widths)),
                     binning=binning)


# ------------------------------------------------------------------------------------------ choices
@dataclass
class Choice:
    """Chosen keys of one section and one line of reason per decision."""

    values: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def set(self, key: str, value: Any, why: str, section_name: str) -> None:
        self.values[key] = value
        self.reasons.append(f"{section_name}.{key} = {_show(value)}: {why}")


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
        return f"{v:_}".replace("_", " ")
    return str(v)


def _fmt_us(us: float) -> str:
    us = float(f"{us:.3g}")  # three significant digits before the unit is picked: 999 998 µs is "1 s"
    if us >= 1e6:
        return f"{us / 1e6:g} s"
    if us >= 1e3:
        return f"{us / 1e3:g} ms"
    return f"{us:g} µs"


def _fmt_n(n: float) -> str:
    n = float(f"{n:.3g}")
    if n >= 1e6:
        return f"{n / 1e6:g} M"
    if n >= 1e4:
        return f"{n / 1e3:g} k"
    return f"{n:.0f}"


def choose_downsample(sensor_size) -> tuple[int, str]:
    """``(k, reason)``: no downsampling on a camera of at most :data:`FULL_RESOLUTION_SIDE` pixels a side,
    else the smallest that leaves at most :data:`MAX_CELLS` cells a side; for 1-D data the smallest that
    leaves at most :data:`MAX_CHANNELS` channels."""
    w, h, _ = (int(v) for v in sensor_size)
    if h == 1:
        k = max(1, -(-w // MAX_CHANNELS))
        return k, f"{w} channels of 1-D data become {-(-w // k)} token channels (at most {MAX_CHANNELS})"
    if max(w, h) <= FULL_RESOLUTION_SIDE:
        return 1, (f"the {w} x {h} sensor keeps every pixel (at most {FULL_RESOLUTION_SIDE} a side: "
                   "each pixel's detail counts)")
    k = max(1, -(-w // MAX_CELLS), -(-h // MAX_CELLS))
    return k, (f"the {w} x {h} sensor becomes a {-(-w // k)} x {-(-h // k)} grid (at most {MAX_CELLS} cells a "
               "side: nearby pixels share a token, so each token merges more events and streams get shorter)")


def choose_bin_us(stats: DataStats) -> tuple[int, str]:
    """``(bin_us, reason)``: the finest width of ``stats.bin_widths`` whose median token count per
    recording is at most :data:`TARGET_TOKENS`. Widths are at most a :data:`MIN_BINS`-th of the median
    duration, so that time order inside a recording stays visible. When even the widest allowed width
    gives more than the target (dense recordings, or spike data whose channels rarely repeat inside a bin),
    the finest width within :data:`DENSE_SLACK` times that width's count: coarser bins would merge little
    more, and input pooling and the training crop keep the long streams affordable."""
    medians = {b: float(np.median(stats.tokens_at(b))) if stats.sampled else 0.0 for b in stats.bin_widths}
    duration = float(np.median(stats.durations_us)) if stats.durations_us.size else 0.0
    allowed = [b for b in stats.bin_widths if b <= duration / MIN_BINS] or [min(stats.bin_widths)]
    for b in allowed:
        if medians[b] <= TARGET_TOKENS:
            what = "one token per event gives" if b == 0 else f"{_fmt_us(b)} bins give"
            coarser = "" if b == 0 else f" (finer bins give more than {TARGET_TOKENS})"
            return b, f"{what} a median of {_fmt_n(medians[b])} tokens per recording{coarser}"
    widest = max(allowed)
    b = next(b for b in allowed if medians[b] <= DENSE_SLACK * medians[widest])
    what = "one token per event" if b == 0 else f"{_fmt_us(b)} bins"
    return b, (f"{what}: a median of {_fmt_n(medians[b])} tokens per recording; bins up to {_fmt_us(widest)} "
               f"(an eighth of a {_fmt_us(duration)} recording) would still give {_fmt_n(medians[widest])}, so "
               "coarser bins are not worth the lost time resolution (input pooling and the training crop "
               "shorten the streams)")


def choose_time_unit(durations_us: np.ndarray) -> tuple[str, str]:
    med = float(np.median(durations_us)) if durations_us.size else 0.0
    if med >= 100e6:
        unit = "s"
    elif med >= 1e3 or med == 0:
        unit = "ms"
    else:
        unit = "us"
    return unit, f"recordings last {_fmt_us(med)} (median)"


def choose_binning(stats: DataStats, given: Mapping[str, Any], k_reason: str | None = None) -> Choice:
    """The ``binning`` keys ``given`` leaves out (``downsample`` and ``polarity`` were fixed before the
    tokens were counted: ``stats.binning`` holds them)."""
    out = Choice()
    if "downsample" not in given:
        out.set("downsample", stats.binning.downsample, k_reason or "", "binning")
    if "polarity" not in given:
        out.set("polarity", True, "ON and OFF events stay apart (the polarity is informative)"
                if stats.sensor_size[2] == 2 else "the sensor has one polarity", "binning")
    if "bin_us" not in given:
        b, why = choose_bin_us(stats)
        out.set("bin_us", b, why, "binning")
    if "time_unit" not in given:
        unit, why = choose_time_unit(stats.durations_us)
        out.set("time_unit", unit, why, "binning")
    return out


def _pow2_at_least(x: float, cap: int) -> int:
    p = 1
    while p < x and p < cap:
        p *= 2
    return p


def default_model_section(stats: DataStats, binning: BinningConfig, given: Mapping[str, Any] | None = None) -> Choice:
    """The ``model`` keys ``given`` leaves out, for the data described by ``stats`` binned with ``binning``.

    Size from the number of training recordings (fewer recordings, a smaller model with more dropout);
    input pooling and a pooling after the first layer from the median token count; time constants from the
    durations. **The embedding is chosen here**: :data:`DEFAULT_EMBEDDING`.
    """
    given = dict(given or {})
    out = Choice()

    def put(key, value, why):
        if key not in given:
            out.set(key, value, why, "model")

    n = stats.n_recordings
    if n < 300:
        size, why = dict(d_model=32, n_layers=2, d_state=8, dropout=0.2), f"{n} training recordings: a small model"
    elif n < 3000:
        size, why = dict(d_model=48, n_layers=3, d_state=8, dropout=0.1), f"{n} training recordings: a medium model"
    else:
        size, why = dict(d_model=64, n_layers=4, d_state=16, dropout=0.1), f"{n} training recordings: a larger model"
    put("type", TOKEN_MODEL, "tokens in, event-mode Mamba layers")
    for key, value in size.items():
        put(key, value, why + (" with dropout against overfitting" if key == "dropout" else ""))
    n_layers = int(given.get("n_layers", size["n_layers"]))

    # ---- the embedding: switch the default here
    why = {"table": "one learned row per token id", "factorised": "x, y and polarity rows",
           "surface": "each token's local time surface through an MLP shared by every position (neighbouring "
                      "pixels are related from the start), plus coarse position and polarity rows"}
    put("embedding", DEFAULT_EMBEDDING, why[DEFAULT_EMBEDDING])
    if given.get("embedding", DEFAULT_EMBEDDING) == "surface":
        if binning.bin_us > 0:
            tau, tau_why = 2 * binning.bin_us, f"twice the {binning.bin_us} µs time bin"
        else:
            med_us = float(np.median(stats.durations_us)) if stats.durations_us.size else 100_000.0
            tau, tau_why = med_us / 5, "a fifth of the median recording (one token per event)"
        tau = float(max(100, round(tau, -2)))
        put("surface", {"radius": SURFACE_RADIUS, "tau_us": [tau], "scales": [1], "kind": "time"},
            f"{2 * SURFACE_RADIUS + 1}-cell patches of last-event times decaying with tau {tau:g} µs ({tau_why})")
    put("count_feature", binning.bin_us > 0,
        "a token that merged many events differs from one that merged few" if binning.bin_us > 0
        else "every token is one event")

    tokens = stats.tokens_at(binning.bin_us) if binning.bin_us in stats.bin_widths else stats.tokens[:, 0]
    median = float(np.median(tokens)) if tokens.size else 0.0
    pool = int(given.get("input_pool", _pow2_at_least(median / LAYER_TOKENS, 32)))
    target = f"at most {LAYER_TOKENS}, for CPU training" if median / pool <= LAYER_TOKENS else "pooling by at most 32"
    put("input_pool", pool, f"the first layer sees about {_fmt_n(median / pool)} of the median {_fmt_n(median)} "
        f"tokens ({target})")
    if given.get("embedding", DEFAULT_EMBEDDING) == "surface" and DEFAULT_CONTEXT is not None:
        if pool <= CONTEXT_MAX_INPUT_POOL:
            if (given.get("surface") or {}).get("tau_us"):  # the surface the user wrote sets the pace
                tau = SurfaceConfig.from_dict(given["surface"], source="model.surface").tau_us[0]
            ctx_tau = float(f"{CONTEXT_TAU_OVER_SURFACE * tau / TIME_UNITS_US[binning.time_unit]:.3g}")
            span = 2 * DEFAULT_CONTEXT["radius"] * DEFAULT_CONTEXT["dilation"] + 1
            put("context", {**DEFAULT_CONTEXT, "tau": ctx_tau},
                f"a second, learned level of spatial features: each token reads its latest neighbours' "
                f"embeddings over {span} cells per axis, decaying with tau {ctx_tau:g} {binning.time_unit} "
                f"({CONTEXT_TAU_OVER_SURFACE:g}x the surface's)")
        else:
            put("context", None,
                f"off: it runs on every token before the input pooling by {pool}, where it would cost several "
                f"times the rest of the model on long streams (on up to pooling by {CONTEXT_MAX_INPUT_POOL}; "
                f"train.auto=true model.context.radius=2 turns it on)")
    if n_layers > 1:
        after = median / pool
        if after > 128:
            strides = [4] + [1] * (n_layers - 2)
            put("pool_stride", strides,
                f"pooling by 4 after the first layer: the later layers see about {_fmt_n(after / 4)}")
        else:
            put("pool_stride", None, f"{_fmt_n(after)} tokens are short enough for every layer")
    unit_us = TIME_UNITS_US[binning.time_unit]
    med_dur = float(np.median(stats.durations_us)) / unit_us if stats.durations_us.size else 0.0
    # The slowest time constant: the power of ten that covers at least half a median recording.
    tau_max = 10.0 ** math.ceil(math.log10(med_dur / 2)) if med_dur > 0 else 1000.0
    put("tau_max", tau_max, f"the slowest decay spans half a median recording or more ({med_dur:.4g} "
        f"{binning.time_unit})")
    put("tau_min", tau_max / 1000,
        f"time constants over three decades, {tau_max / 1000:g} to {tau_max:g} {binning.time_unit}")
    put("readout", "mean", "the average over the stream")
    return out


def _round_up(x: float, step: int) -> int:
    return int(math.ceil(max(x, 1) / step) * step)


def choose_train(stats: DataStats, binning: BinningConfig, model_section: Mapping[str, Any],
                 given: Mapping[str, Any], available_bytes: int | None) -> Choice:
    """The ``train`` keys ``given`` leaves out: batches (count cap, token budget within memory, crop),
    epochs, learning rate, warmup, validation and test frequency."""
    from ..model.classifier import EventClassifier
    from ..model.memory import activation_bytes_per_token, training_step_bytes

    out = Choice()

    def put(key, value, why):
        if key not in given:
            out.set(key, value, why, "train")

    n = stats.n_recordings
    validation = choose_validation(n, given)
    out.values.update(validation.values)
    out.reasons += validation.reasons
    n_fit = n - round(n * float(given.get("val_fraction", out.values.get("val_fraction", 0.0))))
    bs = int(given.get("batch_size", min(32, max(4, n_fit // 6))))
    put("batch_size", bs, "at most 32 recordings a batch, and at least about 6 batches an epoch")

    tokens = stats.tokens_at(binning.bin_us) if binning.bin_us in stats.bin_widths else stats.tokens[:, 0]
    median = float(np.median(tokens)) if tokens.size else 1.0
    p90 = float(np.percentile(tokens, 90)) if tokens.size else 1.0
    crop = given.get("max_tokens")
    if crop is None:
        crop = _round_up(max(p90, 2 * median), 256)
        crop_why = (f"a random crop of the longest training streams (90th percentile {_fmt_n(p90)}, median "
                    f"{_fmt_n(median)} tokens; the longest seen {_fmt_n(float(tokens.max()) if tokens.size else 0)})")
    vocab = vocab_size(stats.sensor_size, binning)
    kwargs = {k: v for k, v in model_section.items() if k != "type"}
    needs_grid = kwargs.get("embedding", "table") != "table" or kwargs.get("context") is not None
    if needs_grid and kwargs.get("grid") is None:
        from .data import token_grid

        kwargs["grid"] = token_grid(stats.sensor_size, binning)
    model = EventClassifier(vocab, max(stats.n_classes, 1), **kwargs)
    per_token = activation_bytes_per_token(model, max(int(crop), 1))
    fixed = training_step_bytes(model, 1, 1).fixed
    budget = given.get("batch_tokens")
    memory_note = ""
    if budget is None:
        budget = _round_up(max(bs * median, crop), 1024)
        if available_bytes is not None:
            fits = int((available_bytes * MEMORY_SHARE - fixed) // per_token)
            if fits < budget:
                budget = max(1024, fits // 1024 * 1024)
                memory_note = (f"; lowered to fit {MEMORY_SHARE:.0%} of the {available_bytes / 1e9:.1f} GB available "
                               f"(about {per_token / 1e3:.1f} kB a token)")
        est = training_step_bytes(model, 1, budget)
        put("batch_tokens", budget, f"a batch of median streams holds {bs}; the largest step needs about "
            f"{est.total / 1e9:.2f} GB{memory_note}")
    if "max_tokens" not in given:
        if crop > budget:
            crop_why += f", at most the batch budget {budget}"
            crop = int(budget)
        put("max_tokens", int(crop), crop_why)

    steps = max(1, math.ceil(n_fit / max(1, min(bs, int(budget) // max(int(median), 1)))))
    wanted = math.ceil(TARGET_STEPS / steps)
    epochs = int(given.get("epochs", min(MAX_EPOCHS, max(MIN_EPOCHS, wanted))))
    per_epoch = f"about {steps} optimizer step{'s' if steps > 1 else ''} an epoch"
    if wanted > MAX_EPOCHS:
        why = (f"{per_epoch}: at most {MAX_EPOCHS} epochs, so about {steps * MAX_EPOCHS} of the {TARGET_STEPS} "
               "steps aimed at")
    elif wanted < MIN_EPOCHS:
        why = f"{per_epoch}: at least {MIN_EPOCHS} epochs, so about {steps * MIN_EPOCHS} steps"
    else:
        why = f"{per_epoch}, about {TARGET_STEPS} in all ({MIN_EPOCHS} to {MAX_EPOCHS} epochs)"
    put("epochs", epochs, why)
    d_model = int(model_section.get("d_model", 32))
    put("lr", 0.005 if d_model <= 48 else 0.003, f"AdamW for a {d_model}-wide model, cosine decay")
    if "warmup_steps" not in given:
        put("warmup_epochs", round(max(0.5, 0.04 * epochs), 1), "linear warmup over about 4 % of the run")
    put("min_lr_ratio", 0.02, "the cosine ends at 2 % of lr")
    # A moving average of the weights over about a tenth of the run: the horizon that the N-MNIST and POKER-DVS
    # configs were given by hand (~100 of 1 120 and ~50 of 560 steps).
    horizon = max(10, round(steps * epochs * EMA_SHARE))
    put("ema_decay", round(1.0 - 1.0 / horizon, 4), f"validate and ship the moving average of the weights over about "
        f"{horizon} of the run's {steps * epochs} optimizer steps (a tenth), as the N-MNIST and POKER-DVS configs do")
    every = max(1, epochs // 4)
    put("test_every", every, "the test split after every epoch" if every == 1
        else f"the test split every {every} epochs and after the last")
    return out


#: Augmentation a dataset-only config gets on a camera, besides the translation (:func:`choose_augment`). Chosen
#: against none on the validation splits of the N-MNIST subset and the POKER-DVS kAER folder, 3 seeds each
#: (docs/training.md, "Sixth round").
CAMERA_AUGMENT = {"max_rotation_deg": 15.0, "scale": [0.9, 1.1], "drop_rate": 0.2}
#: Largest random translation of a camera's events, as a share of its smaller side (2 px at 34 x 34, 14 at
#: 304 x 240: about what the N-MNIST and POKER-DVS configs use by hand).
AUGMENT_SHIFT_SHARE = 0.06
#: Augmentation of 1-D spike data (sensor ``(channels, 1, P)``): half of the training recordings get a random
#: 20-50 % of another recording's events in place of their own, with the labels mixed in that proportion
#: (``evmamba.pipeline.mixing``). Chosen on validation on a 68-channel stand-in against none, a 20 % event
#: drop (with and without a time stretch) and drop, stretch and mixing together (docs/training.md, "Seventh
#: round"); 1-D data have no plane to move, turn or zoom.
SPIKE_AUGMENT = {"mix_p": 0.5}


def choose_augment(sensor_size, given: Mapping[str, Any] | None) -> Choice:
    """The ``augment`` section of a config that has none (``given`` None): :data:`CAMERA_AUGMENT` and a
    translation on a 2-D sensor ``(W, H, P)``, :data:`SPIKE_AUGMENT` on 1-D spike data (``H == 1``). A
    config's own section, even an empty one, is kept (an empty choice)."""
    out = Choice()
    if given is not None:
        return out
    w, h = int(sensor_size[0]), int(sensor_size[1])
    if h == 1 or w == 1:
        mixing = AugmentConfig.from_dict(SPIKE_AUGMENT, source="SPIKE_AUGMENT")
        lo, hi = mixing.mix_ratio
        why = (f"{mixing.mix_p:.0%} of the training recordings take in {lo:.0%}-{hi:.0%} of another recording's "
               "events, labels mixed in proportion (on spike channels there is no plane to move or turn; chosen "
               "on validation)")
        for key, value in SPIKE_AUGMENT.items():
            out.set(key, value, why, "augment")
        return out
    shift = max(1, round(AUGMENT_SHIFT_SHARE * min(w, h)))
    why = " of the training events (on a camera, a scene moved, turned, zoomed or thinned is the same class)"
    rot, (lo, hi), drop = CAMERA_AUGMENT["max_rotation_deg"], CAMERA_AUGMENT["scale"], CAMERA_AUGMENT["drop_rate"]
    out.set("max_shift", shift, f"random translation by up to {shift} px ({AUGMENT_SHIFT_SHARE:.0%} of the "
                                f"smaller side){why}", "augment")
    out.set("max_rotation_deg", rot, f"random rotation by up to {rot:g} degrees{why}", "augment")
    out.set("scale", [lo, hi], f"random zoom by {lo:g}-{hi:g}{why}", "augment")
    out.set("drop_rate", drop, f"random drop of {drop:.0%}{why}", "augment")
    return out


def choose_validation(n_recordings: int, given_train: Mapping[str, Any]) -> Choice:
    """``train.val_fraction`` when the config gives neither it nor ``train.val_split``: 10 % of a training
    split of 500 recordings or more, else none."""
    out = Choice()
    if "val_split" in given_train or "val_fraction" in given_train:
        return out
    n = n_recordings
    if n >= 500:
        out.set("val_fraction", 0.1, f"{n} training recordings: 10 % (stratified) choose the best epoch", "train")
    else:
        out.set("val_fraction", 0.0, f"only {n} training recordings: all of them train (model.pt is the last "
                "epoch)", "train")
    return out


def choose_dataset(dataset_section: Mapping[str, Any]) -> Choice:
    """``test_fraction`` for a folder dataset without train/test splits."""
    out = Choice()
    if dataset_section.get("name") == "folder" and "test_fraction" not in dataset_section:
        from ..datasets.folder import has_split_layout

        root = dataset_section.get("root")
        if root is not None and not has_split_layout(root, dataset_section.get("labels_csv")):
            out.set("test_fraction", FOLDER_TEST_FRACTION,
                    f"the folder has no train/test split: {FOLDER_TEST_FRACTION:.0%} of every class is held out "
                    f"for testing (stratified, seed {int(dataset_section.get('seed', 0))})", "dataset")
    return out


def choose_settings(train_dataset, given: Mapping[str, Mapping[str, Any]], *, available_bytes: int | None = None,
                    progress: bool = True) -> tuple[dict[str, dict[str, Any]], list[str], DataStats]:
    """Look at ``train_dataset`` (an event dataset: the training split) and choose the ``binning``, ``model``
    and ``train`` keys that ``given`` (``{"binning": {...}, "model": {...}, "train": {...}}``, the
    config's own keys) leaves out, and the ``augment`` section when ``given`` has no ``"augment"`` entry
    (:func:`choose_augment`). Returns ``({section: chosen keys}, reasons, stats)``; the first reason
    describes the data, then one per chosen key. ``available_bytes`` bounds the batch budget (None: no
    bound)."""
    augment_given = given.get("augment")
    given = {name: dict(given.get(name) or {}) for name in ("binning", "model", "train")}
    sensor = tuple(int(v) for v in train_dataset.sensor_size)
    k_given = given["binning"].get("downsample")
    k, k_reason = (int(k_given), "") if k_given is not None else choose_downsample(sensor)
    base = BinningConfig.from_dict({**given["binning"], "downsample": k,
                                    "polarity": given["binning"].get("polarity", True), "bin_us": 0},
                                   source="config: section 'binning'")
    b_given = given["binning"].get("bin_us")
    widths = (int(b_given),) if b_given is not None else BIN_LADDER_US
    stats = describe_dataset(train_dataset, base, widths, progress=progress)
    reasons = [f"{stats.name}: {stats.n_recordings} training recordings of {stats.n_classes} classes, sensor "
               f"{' x '.join(str(v) for v in sensor)}; looked at {stats.sampled}: events "
               f"{_spread(stats.events, _fmt_n)}, duration {_spread(stats.durations_us, _fmt_us)}"]
    bin_choice = choose_binning(stats, given["binning"], k_reason)
    binning = BinningConfig.from_dict({**given["binning"], **bin_choice.values}, source="config: section 'binning'")
    model_choice = default_model_section(stats, binning, given["model"])
    model_section = {**model_choice.values, **given["model"]}
    train_choice = choose_train(stats, binning, model_section, given["train"], available_bytes)
    augment_choice = choose_augment(sensor, augment_given)
    reasons += bin_choice.reasons + model_choice.reasons + augment_choice.reasons + train_choice.reasons
    chosen = {"binning": bin_choice.values, "model": model_choice.values, "augment": augment_choice.values,
              "train": train_choice.values}
    return chosen, reasons, stats


# ------------------------------------------------------------------------------------------ the config
def auto_enabled(cfg: Mapping) -> bool:
    """Whether settings are chosen from the data for this config: ``train.auto`` when set, else when a
    token-model config has neither a ``binning`` nor a ``model`` section (configs that give either keep
    the code's defaults for the keys they leave out, as before)."""
    if model_type(cfg) != TOKEN_MODEL:
        return False
    flag = section(cfg, "train").get("auto")
    if flag is not None:
        return bool(flag)
    return not section(cfg, "binning") and not section(cfg, "model")


def resolve_config(cfg, *, progress: bool = True, echo: Callable[[str], None] | None = print,
                   available_bytes: int | None = None, dataset_only: bool = False):
    """``cfg`` with the settings it leaves out chosen from the data (module docstring), or ``cfg`` itself
    when :func:`auto_enabled` is false. Explicit keys always win. Prints one line per decision with
    ``echo``. The result has ``train.auto: false``. ``available_bytes``: memory for the batch budget (None:
    not limited). ``dataset_only``: choose only the dataset keys (for commands that read no binning or
    model, such as ``evmamba baseline``).

    Raises ``ValueError`` for data that cannot be described (an empty training split) and passes on the
    dataset's own errors.
    """
    from omegaconf import OmegaConf

    if not auto_enabled(cfg):
        return cfg
    from ..datasets.registry import build_dataset

    say = echo or (lambda line: None)
    given = {name: section(cfg, name) for name in ("dataset", "binning", "model", "train")}
    # An augment section the config gives, even an empty one, is its own choice; None: it has none.
    given["augment"] = section(cfg, "augment") if cfg.get("augment") is not None else None
    ds_choice = choose_dataset(given["dataset"])
    dataset_section = {**given["dataset"], **ds_choice.values}
    chosen: dict[str, dict[str, Any]] = {"dataset": ds_choice.values}
    reasons = list(ds_choice.reasons)
    train_ds = build_dataset(dataset_section, "train")
    if dataset_only:  # the split of the recordings, as training will make it
        validation = choose_validation(len(train_ds), given["train"])
        chosen["train"] = validation.values
        reasons += validation.reasons
    else:
        more, more_reasons, _ = choose_settings(train_ds, given, available_bytes=available_bytes, progress=progress)
        chosen.update(more)
        reasons = more_reasons[:1] + reasons + more_reasons[1:]  # the data first
    for line in reasons:
        say(f"auto: {line}")
    plain = OmegaConf.to_container(cfg, resolve=True) if hasattr(cfg, "_metadata") else dict(cfg)
    for name, values in chosen.items():
        if values:  # the config's own keys win, and come first
            own = given[name] or {}
            plain[name] = {**own, **{k: v for k, v in values.items() if k not in own}}
    plain["train"] = {**(plain.get("train") or {}), "auto": False}
    order = ["dataset", "binning", "model", "augment", "train"]
    ordered = {k: plain[k] for k in order if k in plain}
    ordered.update({k: v for k, v in plain.items() if k not in ordered})
    return OmegaConf.create(ordered)


def _spread(values: np.ndarray, fmt) -> str:
    if values.size == 0:
        return "none"
    return f"median {fmt(float(np.median(values)))} ({fmt(float(values.min()))} to {fmt(float(values.max()))})"


__all__ = ["AUGMENT_SHIFT_SHARE", "BIN_LADDER_US", "CAMERA_AUGMENT", "DEFAULT_CONTEXT", "DEFAULT_EMBEDDING",
           "SPIKE_AUGMENT", "DataStats", "auto_enabled", "choose_augment", "choose_bin_us", "choose_binning",
           "choose_downsample", "choose_settings", "choose_train", "default_model_section", "describe_dataset",
           "resolve_config", "spread_indices"]
