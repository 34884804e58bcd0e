"""The CPU step of the stream loop: the whole classifier, token by token, in one compiled call per chunk.

:meth:`EventClassifier.step <evmamba.model.classifier.EventClassifier.step>` through PyTorch is a few dozen
small operator calls per token, each costing microseconds of dispatch on a CPU: milliseconds per token,
far from real time for a DVS stream. :class:`FastStepper` instead exports the weights once
(:func:`export_weights`: contiguous float32 arrays, matrices stored transposed) and runs every token of a
chunk in one numba call (:func:`evmamba.kernels.cpu_step.run_tokens`), so the per-call overhead is
paid once per chunk while logits are still produced after every token.

It computes the same function as the classifier's ``step`` and ``forward`` (tested: relative error below
1e-5 in float32, for all four discretizations, every embedding, all readouts, with pooling and with the
context stage, whose neighbour map each stream keeps with the rest of its state).

Shapes: a chunk is ``tokens`` ``(T,)`` int, ``dt`` ``(T,)`` float32 (the binning's time unit), ``counts``
``(T,)`` int; the result holds ``logits`` ``(M, n_classes)`` float32 and ``index`` ``(M,)``: the positions,
within the chunk, of the ``M`` tokens whose logits were asked for (all of them by default).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..kernels import cpu_step as K
from ..kernels.discretization import METHOD_CODES
from .steppers import StepOutput


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


class FastWeights(NamedTuple):
    """A classifier's parameters as the kernel reads them (see :func:`export_weights`)."""

    embed: tuple
    layers: tuple
    head: tuple
    n_classes: int
    vocab_size: int
    d_model: int
    d_inner: int
    d_state: int
    d_conv: int
    dt_rank: int
    n_pools: int
    n_surface: int = 0  # F of the local surfaces a "surface" embedding reads (0: none)
    surface_hidden: int = 0
    surface_config: object = None  # their SurfaceConfig (None: the model reads no surfaces)
    context: tuple = None  # the context stage's weights and settings (see cpu_step._context); None: no stage
    context_channels: int = 0  # C of the context stage (0: none)


def _unsupported(what: str) -> ValueError:
    return ValueError(f"FastStepper: the model has {what}, which the compiled CPU step does not implement")


@torch.no_grad()
def export_weights(model) -> FastWeights:
    """Copy an :class:`~evmamba.model.classifier.EventClassifier`'s parameters into kernel layout.

    Per-layer tensors are stacked along a leading layer axis (every layer has the same sizes); matrices are
    transposed to input-major; ``A = -exp(A_log)`` and the event rates ``softplus(dtA_proj.bias)`` are
    computed here with torch, exactly as the layers compute them. Raises ``TypeError`` for another model
    class and ``ValueError`` for a layer option the kernel does not implement.
    """
    from ..model.classifier import EventClassifier

    if not isinstance(model, EventClassifier):
        raise TypeError(f"FastStepper: model must be an EventClassifier; got {type(model).__name__}")
    layers = list(model.layers)
    first = layers[0]
    e, n, r, kc = first.d_inner, first.d_state, first.dt_rank, first.d_conv
    methods = {layer.discretization for layer in layers}
    if len(methods) != 1:
        raise _unsupported(f"layers with different discretizations {sorted(methods)}")
    for layer in layers:
        if (layer.d_inner, layer.d_state, layer.dt_rank, layer.d_conv) != (e, n, r, kc):
            raise _unsupported("layers of different sizes")
    d = model.d_model

    def stack(fn):
        return np.ascontiguousarray(np.stack([fn(layer) for layer in layers]))

    def bias_or_zeros(lin, size):
        return _f32(lin.bias) if lin.bias is not None else np.zeros(size, np.float32)

    in_wt = stack(lambda m: _f32(m.in_proj.weight).T)  # (L, D, 2E)
    in_b = stack(lambda m: bias_or_zeros(m.in_proj, 2 * e))
    conv_w = stack(lambda m: _f32(m.conv1d.weight[:, 0, :]).T)  # (L, K, E)
    conv_b = stack(lambda m: _f32(m.conv1d.bias) if m.conv1d.bias is not None else np.zeros(e, np.float32))
    xp_wt = stack(lambda m: _f32(m.x_proj.weight).T)  # (L, E, R + 2N)
    dtp_wt = stack(lambda m: _f32(m.dt_proj.weight).T)  # (L, R, E)
    dt_b = stack(lambda m: _f32(m.dt_proj.bias))
    a_neg = stack(lambda m: _f32(-torch.exp(m.A_log.float())).T)  # (L, N, E)
    d_skip = stack(lambda m: _f32(m.D))
    rate = stack(lambda m: _f32(F.softplus(m.dtA_proj.bias.float())))
    out_wt = stack(lambda m: _f32(m.out_proj.weight).T)  # (L, E, D)
    out_b = stack(lambda m: bias_or_zeros(m.out_proj, d))
    layer_arrays = (in_wt, in_b, conv_w, conv_b, xp_wt, dtp_wt, dt_b, a_neg, d_skip, rate, out_wt, out_b)
    layer_arrays = tuple(np.ascontiguousarray(a, dtype=np.float32) for a in layer_arrays)

    emb = model.embedding
    empty2 = np.zeros((1, d), np.float32)
    table = xt = yt = pt = pos = empty2
    w1t, w2t = np.zeros((0, d), np.float32), np.zeros((0, d), np.float32)
    b1 = b2 = np.zeros(d, np.float32)
    gw = gp = cell = nx = 1
    if emb.kind == "table":
        table = _f32(emb.table.weight)
    else:
        gw, _, gp = emb.grid
        pt = _f32(emb.p_table.weight)
    if emb.kind == "factorised":
        xt, yt = _f32(emb.x_table.weight), _f32(emb.y_table.weight)
    elif emb.kind == "surface":
        mlp = emb.surface_mlp
        lin1, lin2 = (mlp[0], mlp[2]) if isinstance(mlp, torch.nn.Sequential) else (mlp, None)
        w1t, b1 = np.ascontiguousarray(_f32(lin1.weight).T), _f32(lin1.bias)  # (F, hidden or d)
        if lin2 is not None:
            w2t, b2 = np.ascontiguousarray(_f32(lin2.weight).T), _f32(lin2.bias)  # (hidden, d)
        pos, cell, nx = _f32(emb.pos_table.weight), emb.position_cell, emb.position_nx
    has_count = emb.count_proj is not None
    count_w = _f32(emb.count_proj.weight[:, 0]) if has_count else np.zeros(d, np.float32)
    embed = (np.int64(K.EMBED_CODES[emb.kind]), np.int64(has_count), table, xt, yt, pt, np.int64(gw), np.int64(gp),
             count_w, w1t, b1, w2t, b2, pos, np.int64(cell), np.int64(nx))
    n_surface = emb.n_surface if emb.needs_surfaces else 0

    norms = list(model.norms)
    norm_kind = K.NORM_CODES["rms"] if isinstance(norms[0], torch.nn.RMSNorm) else K.NORM_CODES["layer"]
    eps = norms[0].eps if norms[0].eps is not None else torch.finfo(torch.float32).eps
    norm_w = np.ascontiguousarray(np.stack([_f32(m.weight) for m in norms]))
    norm_b = np.ascontiguousarray(np.stack([
        _f32(m.bias) if getattr(m, "bias", None) is not None else np.zeros(d, np.float32) for m in norms
    ]))
    fn = model.final_norm
    fnorm_b = _f32(fn.bias) if getattr(fn, "bias", None) is not None else np.zeros(d, np.float32)
    # Stage k holds layers stage_start[k] .. stage_start[k + 1] - 1 (a first stage may be empty: input pooling).
    stage_start = np.zeros(len(model.stages) + 1, np.int64)
    for k, stage in enumerate(model.stages):
        if stage and list(stage) != list(range(stage[0], stage[0] + len(stage))):
            raise _unsupported(f"a stage with non-consecutive layers {stage}")
        stage_start[k + 1] = stage_start[k] + len(stage)
    strides = np.asarray(model.stage_strides, np.int64)
    head = (
        np.int64(norm_kind), np.float32(eps), norm_w, norm_b, _f32(fn.weight), fnorm_b,
        _f32(model.head.weight).T.copy(), _f32(model.head.bias), stage_start, strides,
        np.int64(K.READOUT_CODES[model.readout_kind]), np.float32(model.dt_eps), np.int64(model.event_mode),
        np.int64(METHOD_CODES[first.discretization]),
    )
    context, channels = _export_context(model.context, d)
    return FastWeights(embed, layer_arrays, head, model.n_classes, model.vocab_size, d, e, n, kc, r, len(strides),
                       n_surface, w2t.shape[0], model.surface_config, context, channels)


_ACT_CODES = {"none": 0, "silu": 1}


def _export_context(stage, d_model: int):
    """The context stage in kernel layout (:func:`evmamba.kernels.cpu_step._context`) and its channels ``C``:
    ``in_proj`` as ``(D, C)``, ``out_proj`` as ``(N C, D)`` (row ``n C + c``: channel ``c`` of neighbour ``n``,
    the order in which the stage concatenates them), the neighbour offsets, the grid, ``tau`` and the
    activation. Without a stage: empty arrays of the same types (the kernel tests ``in_wt.size``)."""
    if stage is None:
        z1, z2, zi = np.zeros(0, np.float32), np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        return (z2, z1, z2, z1, zi, zi, zi, np.int64(1), np.int64(1), np.int64(1), np.float64(1.0), np.int64(0)), 0
    c = stage.channels

    def bias(lin, size):
        return _f32(lin.bias) if lin.bias is not None else np.zeros(size, np.float32)

    w, h, p = stage.grid
    ints = lambda t: np.ascontiguousarray(t.detach().cpu().numpy().astype(np.int64))  # noqa: E731
    context = (
        np.ascontiguousarray(_f32(stage.in_proj.weight).T), bias(stage.in_proj, c),
        np.ascontiguousarray(_f32(stage.out_proj.weight).T), bias(stage.out_proj, d_model),
        ints(stage.dx), ints(stage.dy), ints(stage.dp), np.int64(w), np.int64(h), np.int64(p),
        np.float64(stage.tau), np.int64(_ACT_CODES[stage.config.activation]),
    )
    return context, c


class FastStepper:
    """One or more streams' recurrent state plus the compiled step (a :class:`~evmamba.streaming.steppers.Stepper`);
    see the module docstring.

    ``FastStepper(model_or_weights, n_streams=1)``; :meth:`run` advances stream ``s`` by a chunk of tokens;
    :meth:`reset` zeroes a stream's state (a new recording). The weights are copied at construction: later
    changes to the model do not reach the stepper.
    """

    def __init__(self, model, n_streams: int = 1):
        if isinstance(n_streams, bool) or not isinstance(n_streams, int) or n_streams < 1:
            raise ValueError(f"FastStepper: argument 'n_streams' must be a positive int; got {n_streams!r}")
        self.weights = model if isinstance(model, FastWeights) else export_weights(model)
        w = self.weights
        self.n_classes = w.n_classes
        self.vocab_size = w.vocab_size
        n_pool = max(w.n_pools, 1)  # the kernel indexes (n_pools, ...) arrays; keep them non-empty
        n_layers = w.layers[0].shape[0]
        f32 = np.float32
        self._states = []
        for _ in range(n_streams):
            self._states.append((
                np.zeros((n_layers, w.d_conv, w.d_inner), f32),  # conv states, committed
                np.zeros((n_layers, w.d_state, w.d_inner), f32),  # selective states, committed
                np.zeros((n_layers, w.d_conv, w.d_inner), f32),  # scratch (open pooling windows)
                np.zeros((n_layers, w.d_state, w.d_inner), f32),
                np.zeros((n_pool, w.d_model), f32),  # per pooling: sum of the open window
                np.zeros(n_pool, f32),  # ... its Δt sum
                np.zeros(n_pool, f32),  # ... its token count
                np.zeros(w.d_model, f32),  # readout: weighted sum
                np.zeros(1, f32),  # readout: total weight
                np.zeros(w.d_model, f32),  # readout: last committed output
            ))
        # The context stage's neighbour map per stream: the latest h of every id (V, C), its time (V,) float64,
        # whether the id was seen (V,), and the stream's running time (1,) float64. Zeroed by reset like the
        # rest of the state (a never-seen id contributes 0, as the PyTorch step's zeroed map gives).
        ctx = w.context if w.context is not None else _export_context(None, w.d_model)[0]
        self._context = ctx
        v = w.vocab_size if w.context_channels else 0
        self._ctx_states = [
            (np.zeros((v, w.context_channels), f32), np.zeros(v, np.float64), np.zeros(v, np.uint8),
             np.zeros(1, np.float64))
            for _ in range(n_streams)
        ]
        self._cws = (np.zeros(w.context_channels, f32), np.zeros(w.d_model, f32))
        self._ws = (np.zeros(w.d_model, f32), np.zeros(w.d_model, f32), np.zeros(w.d_model, f32),
                    np.zeros(w.surface_hidden, f32))
        self.n_surface = w.n_surface
        self.surface_config = w.surface_config  # the stream loop keeps a SurfaceTracker per stream with it
        self._no_surfaces = np.zeros((0, 0), f32)
        e = w.d_inner
        self._lws = (
            np.zeros(2 * e, f32), np.zeros(e, f32), np.zeros(w.dt_rank + 2 * w.d_state, f32),
            np.zeros(e, f32), np.zeros(e, f32), np.zeros(e, f32), np.zeros(w.d_model, f32),
        )
        self._logits = np.zeros((0, w.n_classes), f32)
        self._index = np.zeros(0, np.int64)
        self._all = np.ones(0, np.uint8)

    @property
    def n_streams(self) -> int:
        return len(self._states)

    def reset(self, stream: int | None = None) -> None:
        """Zero the state of ``stream`` (all streams when None): the next token starts a new recording."""
        picked = range(len(self._states)) if stream is None else [self._check_stream(stream)]
        for i in picked:
            for a in (*self._states[i], *self._ctx_states[i]):
                a.fill(0)

    def _check_stream(self, stream) -> int:
        if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)) or not 0 <= stream < len(self._states):
            raise ValueError(f"FastStepper: argument 'stream' must be in [0, {len(self._states)}); got {stream!r}")
        return int(stream)

    def _buffers(self, n: int):
        if self._logits.shape[0] < n:
            size = max(n, 2 * self._logits.shape[0], 256)
            self._logits = np.zeros((size, self.n_classes), np.float32)
            self._index = np.zeros(size, np.int64)
            self._all = np.ones(size, np.uint8)
        return self._logits, self._index

    def run(self, tokens, dt, counts=None, need=None, stream: int = 0, copy: bool = True,
            check: bool = True, surfaces=None) -> StepOutput:
        """Advance ``stream`` by the tokens of a chunk; return the logits after each token in ``need``.

        ``tokens`` (T,) ids in ``[0, vocab_size)``; ``dt`` (T,) float gaps (non-negative, finite);
        ``counts`` (T,) events per token (None: 1); ``need`` (T,) bool or None (every token); ``surfaces``
        (T, F) float32 local surfaces, required exactly when the model's embedding reads them. With
        ``copy=False`` the returned arrays are views of internal buffers that the next call overwrites.
        Raises ``ValueError`` naming the argument for wrong shapes or values; ``check=False`` skips the
        value checks (ids in range, finite gaps) for callers whose tokens come from the binner.
        """
        stream = self._check_stream(stream)
        tokens = np.ascontiguousarray(tokens)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(
                f"FastStepper.run: argument 'tokens' must be a 1-D integer array; got {tokens.dtype} {tokens.shape}"
            )
        n = tokens.shape[0]
        dt = np.ascontiguousarray(dt, dtype=np.float32)
        if dt.shape != (n,):
            raise ValueError(f"FastStepper.run: argument 'dt' must have shape ({n},); got {dt.shape}")
        if counts is None:
            counts = np.ones(n, np.int32)
        else:
            counts = np.ascontiguousarray(counts)
            if counts.shape != (n,):
                raise ValueError(f"FastStepper.run: argument 'counts' must have shape ({n},); got {counts.shape}")
        if n and check:
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"FastStepper.run: argument 'tokens' holds id {bad}, outside [0, {self.vocab_size})")
            if not np.isfinite(dt).all() or float(dt.min()) < 0:
                raise ValueError("FastStepper.run: argument 'dt' must be finite and non-negative")
        logits, index = self._buffers(n)
        if need is None:
            need_arr = self._all[:n]
        else:
            need_arr = np.ascontiguousarray(need, dtype=np.uint8)
            if need_arr.shape != (n,):
                raise ValueError(f"FastStepper.run: argument 'need' must have shape ({n},); got {need_arr.shape}")
        if self.n_surface:
            surfaces = np.ascontiguousarray(surfaces, dtype=np.float32) if surfaces is not None else None
            if surfaces is None or surfaces.shape != (n, self.n_surface):
                got = None if surfaces is None else surfaces.shape
                raise ValueError(
                    f"FastStepper.run: the model needs argument 'surfaces' of shape ({n}, {self.n_surface}) "
                    f"(evmamba.pipeline.surfaces); got {got}"
                )
        elif surfaces is not None:
            raise ValueError("FastStepper.run: argument 'surfaces' is only for models with the 'surface' embedding")
        else:
            surfaces = self._no_surfaces
        w = self.weights
        m = K.run_tokens(tokens, counts, dt, surfaces, need_arr, w.embed, w.layers, w.head, self._states[stream],
                         self._ws, self._lws, logits, index, self._context, self._ctx_states[stream], self._cws)
        out = StepOutput(logits[:m], index[:m])
        return StepOutput(out.logits.copy(), out.index.copy()) if copy else out


__all__ = ["FastStepper", "FastWeights", "StepOutput", "export_weights"]

