"""The GPU step of the stream loop: one token of the classifier in one CUDA graph.

:class:`GraphStepper` captures a whole model step once and replays it per token, in one of two forms (``step``):

* ``"fused"`` -- ONE Triton kernel for the whole step (:mod:`evmamba.kernels.triton_model_step`: embedding,
  every layer, pooling carry, readout and head) on weights packed once by :func:`pack`, reading one packed
  input record per stream and token;
* ``"unfused"`` -- the classifier's own :meth:`~evmamba.model.classifier.EventClassifier.step` (about 40 small
  kernels per token, one of them the fused Triton layer step per layer): the reference, and the path for a
  model the fused kernel does not serve.

The default (``fused=None``) takes the fused step when :func:`fused_support` accepts the model and says so in
:attr:`GraphStepper.step_kind`; ``fused=True`` raises instead of falling back.

The graph reads its token from a device buffer at a device-side position that it advances itself, and writes
the logits into a device buffer at that position, so a chunk of ``T`` tokens costs one host-to-device copy,
``T`` graph replays and one device-to-host copy: no per-token Python tensor work and no host synchronisation
between tokens.

``n_streams = B`` runs ``B`` streams in lockstep (one token of every stream per replay): the throughput
mode for many concurrent streams (:meth:`run_batch`). Rows are reset one by one (:meth:`reset`) when a
stream starts a new recording. The same object serves the :class:`~evmamba.streaming.loop.StreamLoop`
at batch 1 through :meth:`run`, with :class:`~evmamba.streaming.fast_step.FastStepper`'s interface.

**Feeding many streams** (:meth:`GraphStepper.run_records`, the fused step's input records made beforehand):
batch-major records ``(B, T, 3 + F)`` are copied in, replayed and copied out block by block in turn. A stepper
that overlaps (:attr:`GraphStepper.overlap`: by default the fused step of more than one stream on a CUDA
device) also accepts time-major records ``(T, B, 3 + F)``
(:func:`~evmamba.kernels.triton_model_step.pack_inputs_time_major`), where a block is one contiguous slab:
the copy of block ``k + 1`` to the device and of block ``k - 1``'s logits to the host run on their own CUDA
streams while block ``k`` replays (double buffering). Verified against the batch-major feed and the float64
step on Triton's CPU interpreter (where it runs synchronously) and on an H200 (256 and 512 streams, blocks
reused many times); at 4 096 streams it feeds 136 M events/s against 40 M batch-major (docs/benchmarks.md).

For CUDA devices only; ``device="cpu"`` runs the very same step eagerly, without a graph (slow: for
tests of the bookkeeping on machines without a GPU; the fused kernel there only with ``fused=True`` under
``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import numpy as np
import torch

from .steppers import StepOutput

STEP_KINDS = ("fused", "unfused")
#: How :func:`~evmamba.streaming.concurrent.run_gpu` fed the stepper (its result's ``"feed"``): the arrays
#: through :meth:`GraphStepper.run_batch` (the unfused step), batch-major records through
#: :meth:`GraphStepper.run_records`, or time-major records double-buffered (``overlap=True``).
FEEDS = ("arrays", "batch-major", "time-major-overlap")
#: The ``--gpu-step`` choices of the commands and the ``fused`` argument of :class:`GraphStepper` each gives.
GPU_STEP_CHOICES = {"auto": None, "fused": True, "unfused": False}


def fused_support(model) -> str | None:
    """Why the fused one-kernel step cannot run ``model`` (a message naming the setting), or None if it can."""
    from ..kernels import triton_model_step as T
    from ..model.classifier import EventClassifier

    if not isinstance(model, EventClassifier):
        return f"the fused GPU step runs an EventClassifier; got {type(model).__name__}"
    first = model.layers[0]
    limits = [("d_model", model.d_model, T.MAX_D_MODEL), ("d_inner (expand * d_model)", first.d_inner, T.MAX_D_INNER),
              ("d_state", first.d_state, T.MAX_D_STATE), ("d_conv", first.d_conv, T.MAX_D_CONV),
              ("n_classes", model.n_classes, T.MAX_CLASSES)]
    emb = model.embedding
    if emb.needs_surfaces:
        limits.append(("the surface's features", emb.n_surface, T.MAX_SURFACE))
        mlp = emb.surface_mlp
        if isinstance(mlp, torch.nn.Sequential):
            limits.append(("surface_hidden", mlp[0].out_features, T.MAX_SURFACE))
    if model.context is not None:
        limits.append(("context channels", model.context.channels, T.MAX_CONTEXT_CHANNELS))
    for name, value, top in limits:
        if value > top:
            return f"the fused GPU step serves {name} up to {top}; the model has {name}={value}"
    if model.vocab_size >= 1 << 24:
        return (f"the fused GPU step passes token ids as float32 (exact below 2**24); the model has "
                f"vocab_size={model.vocab_size}")
    for layer in model.layers:
        if (layer.d_inner, layer.d_state, layer.dt_rank, layer.d_conv, layer.discretization) != (
                first.d_inner, first.d_state, first.dt_rank, first.d_conv, first.discretization):
            return "the fused GPU step needs every layer of the same sizes and discretization"
    return None


@torch.no_grad()
def pack(model, device="cuda"):
    """The model's weights for the fused step (:class:`~evmamba.kernels.triton_model_step.ModelStepWeights`):
    the CPU step's export (:func:`~evmamba.streaming.fast_step.export_weights`, the same layout and the same
    derived values, ``A = -exp(A_log)`` and the event rates) as float32 tensors on ``device``. Raises
    ``TypeError`` for another model class and ``ValueError`` naming the setting the kernel does not serve."""
    from ..kernels.triton_model_step import ModelStepWeights
    from ..model.classifier import EventClassifier
    from .fast_step import export_weights

    if not isinstance(model, EventClassifier):
        raise TypeError(f"pack: model must be an EventClassifier; got {type(model).__name__}")
    why = fused_support(model)
    if why is not None:
        raise ValueError(f"pack: {why}")
    fw = export_weights(model)
    dev = torch.device(device)

    def t(a):
        a = torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32))
        # An empty array (a table the embedding kind does not have) still needs a valid pointer.
        return (a if a.numel() else torch.zeros(1)).to(dev).contiguous()

    (emb_kind, has_count, table, xt, yt, pt, gw, gp, count_w, w1t, b1, w2t, b2, pos, cell, nx) = fw.embed
    (norm_kind, eps, norm_w, norm_b, fnorm_w, fnorm_b, head_wt, head_b, _, _, readout, dt_eps, event,
     method) = fw.head
    strides = torch.tensor([model.architecture.input_pool, *model.strides], dtype=torch.int32, device=dev)
    # The context stage as the CPU step has it (placeholders without one; the kernel then skips it).
    (c_in, c_in_b, c_out, c_out_b, dx, dy, dp, cgw, cgh, cgp, tau, act) = fw.context
    offsets = np.stack([dx, dy, dp], axis=1).astype(np.int32) if dx.size else np.zeros((1, 3), np.int32)
    return ModelStepWeights(
        *(t(a) for a in (table, xt, yt, pt, pos, count_w, w1t, b1, w2t, b2, norm_w, norm_b)),
        *(t(a) for a in fw.layers),
        *(t(a) for a in (fnorm_w, fnorm_b, head_wt, head_b)), strides,
        *(t(a) for a in (c_in, c_in_b, c_out, c_out_b)), torch.as_tensor(offsets).to(dev).contiguous(),
        n_layers=model.n_layers, d_model=fw.d_model, d_inner=fw.d_inner, d_state=fw.d_state, dt_rank=fw.dt_rank,
        d_conv=fw.d_conv, n_classes=fw.n_classes, n_surface=fw.n_surface, surface_hidden=fw.surface_hidden,
        embed=int(emb_kind), has_count=bool(has_count), grid_w=int(gw), grid_p=int(gp), pos_cell=int(cell),
        pos_nx=int(nx), norm=int(norm_kind), norm_eps=float(eps), readout=int(readout), dt_eps=float(dt_eps),
        event=bool(event), method=int(method), ctx_grid=(int(cgw), int(cgh), int(cgp)), ctx_n=int(dx.size),
        ctx_c=int(fw.context_channels), ctx_silu=bool(act == 1), ctx_tau=float(tau),
    )


def _zero_rows(cache, rows: torch.Tensor) -> None:
    """Zero rows ``rows`` of every per-stream tensor of a classifier inference cache, in place."""
    if isinstance(cache, dict):
        for key, v in cache.items():
            if key == "present":
                continue
            if isinstance(v, torch.Tensor):
                v.index_fill_(0, rows, 0)
            else:
                _zero_rows(v, rows)
    elif isinstance(cache, (list, tuple)):
        for v in cache:
            if v is not None:
                _zero_rows(v, rows)


def _at_first_position(pos: torch.Tensor, warmup: int, step):
    """``step`` for :func:`~evmamba.model.cuda_graph.capture_graph`: each of its ``warmup`` eager runs first puts
    the device-side position back to 0, and the captured run does not. A step advances ``pos`` itself, so
    without this the warm-up would touch positions 0 .. warmup - 1 and run past buffers of ``block`` <= that."""
    calls = [0]

    def run():
        if calls[0] < warmup:
            pos.zero_()
        calls[0] += 1
        return step()

    return run


class GraphStepper:
    """``B`` streams of an :class:`~evmamba.model.classifier.EventClassifier` stepped by a CUDA graph.

    ``block``: tokens per stream held on the device at once (a longer chunk is run in blocks).
    ``fused``: None (default) runs the one-kernel step on CUDA where the model is supported
    (:func:`fused_support`) and the classifier's own ``step`` otherwise; True requires the fused step
    (``ValueError`` naming the unsupported setting); False runs the classifier's ``step``. :attr:`step_kind`
    says which runs (``"fused"`` or ``"unfused"``) and :attr:`fallback_reason` why the default did not fuse.
    ``block_streams``: streams per program of the fused kernel (default
    :func:`~evmamba.kernels.triton_model_step.default_block_streams`); ``num_warps``: its warps per program
    (default: 4, or 8 with ``tl.dot`` blocks of 16 streams; ``evmamba bench stream`` times the others).
    ``overlap``: also hold two time-major (input, logits) buffer pairs, each with its own captured graph, for
    :meth:`run_records` with ``time_major=True`` (copies overlapped with the replays; the fused step only). None
    (default): on where it pays, the fused step of more than one stream on a CUDA device (about 3.4x the
    events/s of the batch-major feed at 4 096 streams on an H200; docs/benchmarks.md); True requires it
    (``ValueError`` where the fused step does not run); False leaves it off. :attr:`overlap` says which.
    """

    def __init__(self, model, n_streams: int = 1, device="cuda", block: int = 1024, warmup: int = 3,
                 fused: bool | None = None, block_streams: int | None = None, overlap: bool | None = None,
                 num_warps: int | None = None):
        if isinstance(n_streams, bool) or not isinstance(n_streams, int) or n_streams < 1:
            raise ValueError(f"GraphStepper: argument 'n_streams' must be a positive int; got {n_streams!r}")
        if fused not in (None, True, False):
            raise ValueError(f"GraphStepper: argument 'fused' must be None, True or False; got {fused!r}")
        if overlap not in (None, True, False):
            raise ValueError(f"GraphStepper: argument 'overlap' must be None, True or False; got {overlap!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("GraphStepper: CUDA is not available; use the CPU stepper (FastStepper) instead")
        self.graphed = self.device.type == "cuda"
        self.model = model.to(self.device).eval()
        self.fallback_reason = fused_support(self.model) if fused is not False else "fused=False"
        if self.fallback_reason is None and not self.graphed:
            from ..kernels.triton_primitives import INTERPRETING

            # On the CPU (tests without a GPU) the eager classifier step is the default; the fused kernel runs
            # there only when asked for, on Triton's interpreter.
            if fused is None or not INTERPRETING:
                self.fallback_reason = "the fused kernel runs on CUDA (or under TRITON_INTERPRET=1 when asked for)"
        if fused and self.fallback_reason is not None:
            raise ValueError(f"GraphStepper: the fused step was asked for but {self.fallback_reason}")
        self.fused = self.fallback_reason is None
        self.step_kind = "fused" if self.fused else "unfused"
        if overlap and not self.fused:
            raise ValueError(f"GraphStepper: overlap=True feeds the fused step's input records, which does not run: "
                             f"{self.fallback_reason} (ask for it with fused=True)")
        if overlap is None:
            # Two more buffer pairs and graphs cost memory, not time per token; they pay with many streams on a GPU.
            overlap = self.fused and self.graphed and n_streams > 1
        self.overlap = bool(overlap)
        self.n_streams, self.block = n_streams, int(block)
        self.vocab_size, self.n_classes = model.vocab_size, model.n_classes
        b, dev = n_streams, self.device
        # The local surfaces of each token, for a "surface" embedding (0: none).
        self.n_surface = model.embedding.n_surface if model.embedding.needs_surfaces else 0
        self.surface_config = model.surface_config
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.logits = torch.zeros(b, self.block, self.n_classes, dtype=torch.float32, device=dev)
        pin = (lambda t: t.pin_memory()) if self.graphed else (lambda t: t)  # noqa: E731
        self._h_logits = pin(torch.zeros(b, self.block, self.n_classes, dtype=torch.float32))
        if self.fused:
            from ..kernels import triton_model_step as T

            self.weights = w = pack(self.model, dev)
            self.cache = T.allocate_state(w, b, dev)
            self.block_streams = T.default_block_streams(b) if block_streams is None else int(block_streams)
            self.num_warps = num_warps
            # One float32 record per stream and token: id, gap, count, surface (one copy in per block).
            self.inp = torch.zeros(b, self.block, w.record, dtype=torch.float32, device=dev)
            self.inp[:, :, 2] = 1.0
            self._h_inp = pin(self.inp.cpu())
            self._counter = torch.zeros(1, dtype=torch.int32, device=dev)
            if self.overlap:
                # Two time-major pairs (input records (block, B, R), logits (block, B, C)): block k replays from
                # pair k % 2 while the next block is copied into the other pair's input and the previous
                # block's logits are copied out of its logits. The kernel sees each as its (B, block, .) view.
                self._tm_inp = [torch.zeros(self.block, b, w.record, dtype=torch.float32, device=dev)
                                for _ in range(2)]
                self._tm_logits = [torch.zeros(self.block, b, self.n_classes, dtype=torch.float32, device=dev)
                                   for _ in range(2)]
                self._tm_views = [(x.transpose(0, 1), y.transpose(0, 1))
                                  for x, y in zip(self._tm_inp, self._tm_logits)]
        else:
            self.cache = self.model.allocate_inference_cache(b, device=dev)
            self.tok = torch.zeros(b, self.block, dtype=torch.long, device=dev)
            self.dt = torch.zeros(b, self.block, dtype=torch.float32, device=dev)
            self.cnt = torch.ones(b, self.block, dtype=torch.float32, device=dev)
            self.surf = (torch.zeros(b, self.block, self.n_surface, dtype=torch.float32, device=dev)
                         if self.n_surface else None)
            # Pinned host staging buffers: asynchronous copies in both directions.
            self._h_tok = pin(torch.zeros(b, self.block, dtype=torch.long))
            self._h_dt = pin(torch.zeros(b, self.block, dtype=torch.float32))
            self._h_cnt = pin(torch.ones(b, self.block, dtype=torch.float32))
            self._h_surf = (pin(torch.zeros(b, self.block, self.n_surface, dtype=torch.float32))
                            if self.n_surface else None)
        self.graph = None
        if not self.graphed:
            return
        from ..model.cuda_graph import capture_graph

        self.graph, _ = capture_graph(_at_first_position(self.pos, warmup, self._one_step), warmup, dev)
        self._tm_graphs = []
        if self.overlap:
            # A graph holds its kernel's buffer addresses, so double buffering takes one graph per buffer pair
            # (two captures of the same launch on different buffers). The alternative, one graph fed by a
            # device-to-device copy from a staging buffer, would move every block through memory twice more.
            for i in range(2):
                step = _at_first_position(self.pos, warmup, lambda i=i: self._fused_step(*self._tm_views[i]))
                graph, _ = capture_graph(step, warmup, dev)
                self._tm_graphs.append(graph)
            # The copies' own streams: one per direction, so that the copy in of block k + 1 and the copy out
            # of block k - 1 can run at the same time as each other and as block k's replays.
            self._h2d = torch.cuda.Stream(dev)
            self._d2h = torch.cuda.Stream(dev)
        self.reset()  # the warm-up and capture runs stepped the streams for real

    def _one_step(self) -> None:
        """One token of every stream: read at ``pos``, step, write the logits at ``pos``, ``pos += 1``."""
        if self.fused:
            self._fused_step(self.inp, self.logits)
            return
        idx = self.pos.expand(self.n_streams)[:, None]
        tok = self.tok.gather(1, idx)[:, 0]
        dt = self.dt.gather(1, idx)[:, 0]
        cnt = self.cnt.gather(1, idx)[:, 0]
        surf = None if self.surf is None else self.surf.index_select(1, self.pos)[:, 0]
        out = self.model.step(tok, dt, self.cache, cnt, surf)
        self.logits.index_copy_(1, self.pos, out[:, None, :])
        self.pos.add_(1)

    def _fused_step(self, inp: torch.Tensor, logits: torch.Tensor) -> None:
        """The fused step on records ``inp`` ``(B, block, R)`` and logits ``(B, block, C)`` (views of any
        strides): one launch; its last program advances ``pos``."""
        from ..kernels.triton_model_step import model_step_triton

        model_step_triton(self.weights, self.cache, inp, self.pos, logits, self._counter, self.block_streams,
                          self.num_warps)

    @torch.no_grad()
    def reset(self, stream=None) -> None:
        """Zero the state of ``stream`` (an int, a sequence of ints, or None for all streams)."""
        if stream is None:
            if self.fused:
                for v in self.cache.values():
                    v.zero_()
            else:
                self.model.reset_inference_cache(self.cache)
            return
        rows = torch.as_tensor(np.atleast_1d(np.asarray(stream, dtype=np.int64)), device=self.device)
        _zero_rows(self.cache, rows)

    @torch.no_grad()
    def run_batch(self, tokens: np.ndarray, dt: np.ndarray, counts: np.ndarray | None = None,
                  copy_out: bool = True, surfaces: np.ndarray | None = None) -> np.ndarray | None:
        """Advance all ``B`` streams by ``T`` tokens each: ``tokens``/``dt``/``counts`` ``(B, T)`` and, for a
        "surface" embedding, ``surfaces`` ``(B, T, F)`` -> logits ``(B, T, C)`` float32 (None when
        ``copy_out`` is false: the logits stay on the device)."""
        b, t_total = tokens.shape
        if b != self.n_streams:
            raise ValueError(f"GraphStepper.run_batch: expected {self.n_streams} rows; got {b}")
        if self.n_surface and (surfaces is None or surfaces.shape != (b, t_total, self.n_surface)):
            got = None if surfaces is None else surfaces.shape
            raise ValueError(
                f"GraphStepper.run_batch: the model needs surfaces of shape {(b, t_total, self.n_surface)}; got {got}"
            )

        def feed(s: int, n: int) -> None:
            if s and not copy_out:
                self._sync()  # the host staging buffers may still be read by the previous block's copy
            if self.fused:
                self._fill_records(s, n, tokens, dt, counts, surfaces)
                return
            self._h_tok[:, :n] = torch.from_numpy(np.ascontiguousarray(tokens[:, s:s + n], dtype=np.int64))
            self._h_dt[:, :n] = torch.from_numpy(np.ascontiguousarray(dt[:, s:s + n], dtype=np.float32))
            if counts is not None:
                self._h_cnt[:, :n] = torch.from_numpy(np.ascontiguousarray(counts[:, s:s + n], dtype=np.float32))
            if self.n_surface:
                self._h_surf[:, :n] = torch.from_numpy(np.ascontiguousarray(surfaces[:, s:s + n], dtype=np.float32))
                self.surf.copy_(self._h_surf, non_blocking=True)
            self.tok.copy_(self._h_tok, non_blocking=True)
            self.dt.copy_(self._h_dt, non_blocking=True)
            self.cnt.copy_(self._h_cnt, non_blocking=True)

        return self._run_blocks(t_total, feed, copy_out)

    @torch.no_grad()
    def run_records(self, records: torch.Tensor, copy_out: bool = True, *, time_major: bool = False,
                    out: torch.Tensor | None = None) -> np.ndarray | None:
        """The fused step's :meth:`run_batch` on input records made beforehand: ``records`` ``(B, T, 3 + F)``
        float32 on the host (:func:`~evmamba.kernels.triton_model_step.pack_inputs`' layout) -> logits
        ``(B, T, C)`` float32 (None when ``copy_out`` is false: the logits stay on the device).

        ``time_major=True`` (a stepper that overlaps, :attr:`overlap`): ``records``
        ``(T, B, 3 + F)`` (:func:`~evmamba.kernels.triton_model_step.pack_inputs_time_major`; pinned, so that
        each block is one asynchronous copy), fed double-buffered: the copy in of block ``k + 1`` and the copy
        out of block ``k``'s logits overlap the replays. The logits are written once, time-major, into ``out``
        ``(T, B, C)`` float32 on the host (default: a new one, pinned on CUDA) and returned as its
        ``(B, T, C)`` view (``ndarray.transpose``: the same values as without ``time_major``, not contiguous).
        On the CPU the same blocks run synchronously."""
        if not self.fused:
            raise ValueError("GraphStepper.run_records: input records feed the fused step only; use run_batch")
        if time_major not in (True, False):
            raise ValueError(f"GraphStepper.run_records: argument 'time_major' must be True or False; "
                             f"got {time_major!r}")
        if time_major:
            return self._run_time_major(records, copy_out, out)
        if out is not None:
            raise ValueError("GraphStepper.run_records: argument 'out' is for time_major=True records")
        want = (self.n_streams, self.inp.shape[-1])
        if not isinstance(records, torch.Tensor) or records.dim() != 3 or (records.shape[0], records.shape[2]) != want \
                or records.dtype != torch.float32:
            got = tuple(records.shape) if isinstance(records, torch.Tensor) else type(records).__name__
            raise ValueError(f"GraphStepper.run_records: records must be float32 of shape ({want[0]}, T, {want[1]}); "
                             f"got {got}")
        return self._run_blocks(
            records.shape[1], lambda s, n: self.inp[:, :n].copy_(records[:, s:s + n], non_blocking=True), copy_out)

    def _run_time_major(self, records, copy_out: bool, out) -> np.ndarray | None:
        """:meth:`run_records` with ``time_major=True``: validate, then :meth:`_feed_time_major`."""
        where = "GraphStepper.run_records (time_major=True)"
        if not self.overlap:
            raise ValueError(f"{where}: build the stepper with overlap=True (it holds the time-major buffers)")
        b, r, c = self.n_streams, self.inp.shape[-1], self.n_classes
        if not isinstance(records, torch.Tensor) or records.dim() != 3 or tuple(records.shape[1:]) != (b, r) \
                or records.dtype != torch.float32:
            got = (f"{records.dtype} {tuple(records.shape)}" if isinstance(records, torch.Tensor)
                   else type(records).__name__)
            raise ValueError(f"{where}: records must be float32 of shape (T, {b}, {r}) (pack_inputs_time_major); "
                             f"got {got}")
        t_total = records.shape[0]
        if out is not None:
            if not copy_out:
                raise ValueError(f"{where}: argument 'out' is written only with copy_out=True")
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (t_total, b, c) or \
                    out.dtype != torch.float32 or out.device.type != "cpu" or not out.is_contiguous():
                got = (f"{out.dtype} {tuple(out.shape)} on {out.device}" if isinstance(out, torch.Tensor)
                       else type(out).__name__)
                raise ValueError(f"{where}: out must be a contiguous float32 host tensor of shape "
                                 f"{(t_total, b, c)}; got {got}")
        elif copy_out:
            out = self.host_logits(t_total)
        self._feed_time_major(records, out)
        return None if out is None else out.numpy().transpose(1, 0, 2)

    def host_logits(self, t_total: int) -> torch.Tensor:
        """An empty ``(t_total, B, C)`` float32 host tensor (pinned on CUDA) for :meth:`run_records`' ``out``
        with ``time_major=True``: made once, before a timed run, it keeps the page locking out of the run."""
        pinned = self.graphed
        return torch.empty((int(t_total), self.n_streams, self.n_classes), dtype=torch.float32, pin_memory=pinned)

    def _feed_time_major(self, records: torch.Tensor, out: torch.Tensor | None) -> None:
        """Blocks of time-major ``records`` through the two buffer pairs; logits into ``out`` (None: none).

        Block ``k`` uses pair ``i = k % 2``. On CUDA, three streams and three events per pair order the work:
        the copy in of block ``k`` (copy-in stream) waits until pair ``i``'s previous replays (block ``k - 2``)
        are done (``replayed[i]``) and then marks ``loaded[i]``; the replays of block ``k`` (the current stream)
        wait for ``loaded[i]`` and for the copy out of block ``k - 2``'s logits (``drained[i]``) and then mark
        ``replayed[i]``; the copy out of block ``k`` (copy-out stream) waits for ``replayed[i]`` and marks
        ``drained[i]``. The host issues block ``k + 1``'s copy in before block ``k``'s replays, so the two
        overlap; every wait names an event already recorded in issue order. On the CPU the same order runs
        synchronously."""
        t_total, block = records.shape[0], self.block
        starts = list(range(0, t_total, block))
        graphed = self.graphed
        if graphed:
            compute = torch.cuda.current_stream(self.device)
            h2d, d2h = self._h2d, self._d2h
            # Work queued before this call (a reset, an earlier run's copies) comes first.
            h2d.wait_stream(compute)
            d2h.wait_stream(compute)
            loaded, replayed, drained = ([torch.cuda.Event() for _ in range(2)] for _ in range(3))

        def load(k: int) -> None:
            s, i = starts[k], k % 2
            n = min(block, t_total - s)
            if not graphed:
                self._tm_inp[i][:n].copy_(records[s:s + n])
                return
            with torch.cuda.stream(h2d):
                if k >= 2:
                    h2d.wait_event(replayed[i])
                self._tm_inp[i][:n].copy_(records[s:s + n], non_blocking=True)
                loaded[i].record(h2d)

        if starts:
            load(0)
        for k, s in enumerate(starts):
            i, n = k % 2, min(block, t_total - s)
            if k + 1 < len(starts):
                load(k + 1)
            if graphed:
                compute.wait_event(loaded[i])
                if k >= 2 and out is not None:
                    compute.wait_event(drained[i])
            self.pos.zero_()
            for _ in range(n):
                if graphed:
                    self._tm_graphs[i].replay()
                else:
                    self._fused_step(*self._tm_views[i])
            if graphed:
                replayed[i].record(compute)  # pair i's input may be overwritten, its logits read
            if out is None:
                continue
            if not graphed:
                out[s:s + n].copy_(self._tm_logits[i][:n])
                continue
            with torch.cuda.stream(d2h):
                d2h.wait_event(replayed[i])
                out[s:s + n].copy_(self._tm_logits[i][:n], non_blocking=True)
                drained[i].record(d2h)
        if graphed:
            compute.wait_stream(h2d)
            compute.wait_stream(d2h)
        self._sync()

    def _run_blocks(self, t_total: int, feed, copy_out: bool) -> np.ndarray | None:
        """``feed(s, n)`` puts tokens ``s .. s + n`` of every stream into the device buffers; then ``n`` replays."""
        out = np.empty((self.n_streams, t_total, self.n_classes), np.float32) if copy_out else None
        for s in range(0, t_total, self.block):
            n = min(self.block, t_total - s)
            feed(s, n)
            self.pos.zero_()
            for _ in range(n):
                self._replay()
            if copy_out:
                self._h_logits.copy_(self.logits, non_blocking=True)
                self._sync()
                out[:, s:s + n] = self._h_logits[:, :n].numpy()
        if not copy_out:
            self._sync()
        return out

    def _fill_records(self, s: int, n: int, tokens, dt, counts, surfaces) -> None:
        """Write tokens ``s .. s + n`` of every stream into the fused step's input records and copy them in."""
        from ..kernels.triton_model_step import write_records

        part = lambda a: None if a is None else a[:, s:s + n]  # noqa: E731
        write_records(self._h_inp[:, :n], part(tokens), part(dt), part(counts), part(surfaces) if self.n_surface
                      else None)
        self.inp.copy_(self._h_inp, non_blocking=True)

    def _replay(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._one_step()

    def _sync(self) -> None:
        if self.graphed:
            torch.cuda.current_stream(self.device).synchronize()

    def run(self, tokens, dt, counts=None, need=None, stream: int = 0, copy: bool = True, check: bool = True,
            surfaces=None) -> StepOutput:
        """:meth:`Stepper.run <evmamba.streaming.steppers.Stepper.run>` at batch 1 (stream 0 only; the result
        is always a fresh array, whatever ``copy``)."""
        if self.n_streams != 1:
            raise ValueError("GraphStepper.run serves one stream; use run_batch for several")
        tokens = np.asarray(tokens)
        n = tokens.shape[0]
        if n and check and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"GraphStepper.run: argument 'tokens' holds ids outside [0, {self.vocab_size})")
        logits = self.run_batch(
            tokens[None],
            np.asarray(dt)[None],
            None if counts is None else np.asarray(counts)[None],
            surfaces=None if surfaces is None else np.asarray(surfaces)[None],
        )
        index = np.arange(n) if need is None else np.flatnonzero(np.asarray(need))
        return StepOutput(logits[0, index], index)


__all__ = ["FEEDS", "GPU_STEP_CHOICES", "STEP_KINDS", "GraphStepper", "fused_support", "pack"]
