"""One token of a whole token classifier in ONE Triton kernel: :func:`model_step_triton`.

The GPU counterpart of :mod:`evmamba.kernels.cpu_step` (same weight packing, same order of operations): per
stream, the embedding (``table``, ``factorised`` or ``surface`` with its MLP, plus the count feature), the
context stage (the token's projection written to a per-stream map of every token id, its neighbours' read back
and decayed), then for every layer its norm (RMS or Layer), ``in_proj``, the causal convolution's state shift,
SiLU, ``x_proj``, ``dt_proj`` and softplus, the discretization (all four, standard or event mode with one
``dt`` per stream), the state update, ``C . h``, the ``D`` skip, the SiLU gate, ``out_proj`` and the residual;
the event pooling carry between stages, the final norm, the running readout (``mean``, ``last``, ``dt_mean``)
and the head. The per-stream state buffers are updated in place.

**Pooling.** A pooling slot follows the embedding (the input pooling) and every layer; a stride of 1 is the
identity (its carry stays empty and is never read or written), so the stages need no branching. ``keep`` per
stream says whether the current token's values are final: it starts true and becomes "this token completed
the window" at each pooling. Where it is false the layers run from the committed state and the new state is
not stored -- exactly :meth:`EventClassifier.step <evmamba.model.classifier.EventClassifier.step>`'s scratch
copy and ``torch.where(commit, ...)``, without the copy.

**Blocking.** One program advances ``BS`` streams, so the weights are read once per ``BS`` streams (at 4 096
streams and ``BS = 16``, 256 reads of ~350 KB instead of 4 096). With ``BS >= 16`` the products go through
``tl.dot`` in full fp32 (``input_precision="ieee"``; every padded size is then at least 16); below, through
broadcast multiply and sum (``BS = 1`` is the batch-1 latency case).

**Inputs.** One float32 record per stream and token, ``(tok, dt, count, surface[0..F))``: one host-to-device
copy feeds a token (ids are exact in float32 below 2**24, which the packing checks). The kernel reads the
record at a device-side position ``pos`` and writes the logits at ``pos``; with ``advance`` the last program
to finish moves ``pos`` on by one (an atomic count of finished programs), so a CUDA graph of this one launch
steps through a block of tokens by itself. Records and logits are addressed through their batch and time
strides (64-bit offsets), so they may be batch-major ``(B, T, .)`` (:func:`pack_inputs`) or time-major
``(T, B, .)`` (:func:`pack_inputs_time_major`, passed as a transposed view), where a block of tokens of every
stream is one contiguous slab.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np
import torch
import triton
import triton.language as tl

from .discretization import DISCRETIZATIONS, METHOD_CODES
from .triton_primitives import INTERPRETING, input_factor, next_pow2, sigmoid, softplus, transition

EMBED_CODES = {"table": 0, "factorised": 1, "surface": 2}
NORM_CODES = {"rms": 0, "layer": 1}
READOUT_CODES = {"mean": 0, "last": 1, "dt_mean": 2}
#: Record layout of one token's input: id, gap, event count, then the local surface's F values.
RECORD_HEAD = 3
#: Largest sizes served (register budget of one program); the packing refuses anything larger.
MAX_D_MODEL = 256
MAX_D_INNER = 512
MAX_D_STATE = 64
MAX_D_CONV = 8
MAX_SURFACE = 256
MAX_CLASSES = 1024
MAX_CONTEXT_CHANNELS = 256


class ModelStepWeights(NamedTuple):
    """A classifier's parameters on the device, float32 and contiguous, in the CPU step's layout
    (matrices input-major; see :func:`evmamba.streaming.fast_step.export_weights`). ``L`` layers, ``D`` d_model,
    ``E`` d_inner, ``N`` d_state, ``R`` dt_rank, ``K`` d_conv, ``C`` classes, ``F`` surface features, ``H`` the
    surface MLP's hidden width (0: linear).

    Tensors: ``table`` (V, D), ``x_tab`` (W', D), ``y_tab`` (H', D), ``p_tab`` (P, D), ``pos_tab`` (cells, D),
    ``count_w`` (D,), ``s_w1t`` (F, H or D), ``s_b1``, ``s_w2t`` (H, D), ``s_b2`` (D,); ``norm_w``/``norm_b``
    (L, D); ``in_wt`` (L, D, 2E), ``in_b`` (L, 2E), ``conv_w`` (L, K, E), ``conv_b`` (L, E), ``xp_wt``
    (L, E, R + 2N), ``dtp_wt`` (L, R, E), ``dt_b`` (L, E), ``a_neg`` (L, N, E) (``A = -exp(A_log)``),
    ``d_skip`` (L, E), ``rate`` (L, E) (``softplus`` of the event rate), ``out_wt`` (L, E, D), ``out_b``
    (L, D); ``fnorm_w``/``fnorm_b`` (D,), ``head_wt`` (D, C), ``head_b`` (C,); ``strides`` (L + 1,) int32:
    the input pooling's stride, then the stride after each layer (1: none).

    The context stage (``ctx_n`` neighbours of ``ctx_c`` channels; ``ctx_n = 0``: none, and one-element
    placeholders): ``ctx_in_wt`` (D, ctx_c), ``ctx_in_b`` (ctx_c,), ``ctx_out_wt`` (ctx_n * ctx_c, D) (row
    ``n ctx_c + c``: channel ``c`` of neighbour ``n``), ``ctx_out_b`` (D,), ``ctx_off`` (ctx_n, 3) int32: each
    neighbour's ``(dx, dy, dp)``; ``ctx_silu`` SiLU after the input projection, ``ctx_tau`` the decay's time
    constant (the unit of ``dt``), ``ctx_grid`` the stage's token grid ``(W', H', P)``.
    """

    table: torch.Tensor
    x_tab: torch.Tensor
    y_tab: torch.Tensor
    p_tab: torch.Tensor
    pos_tab: torch.Tensor
    count_w: torch.Tensor
    s_w1t: torch.Tensor
    s_b1: torch.Tensor
    s_w2t: torch.Tensor
    s_b2: torch.Tensor
    norm_w: torch.Tensor
    norm_b: torch.Tensor
    in_wt: torch.Tensor
    in_b: torch.Tensor
    conv_w: torch.Tensor
    conv_b: torch.Tensor
    xp_wt: torch.Tensor
    dtp_wt: torch.Tensor
    dt_b: torch.Tensor
    a_neg: torch.Tensor
    d_skip: torch.Tensor
    rate: torch.Tensor
    out_wt: torch.Tensor
    out_b: torch.Tensor
    fnorm_w: torch.Tensor
    fnorm_b: torch.Tensor
    head_wt: torch.Tensor
    head_b: torch.Tensor
    strides: torch.Tensor
    ctx_in_wt: torch.Tensor
    ctx_in_b: torch.Tensor
    ctx_out_wt: torch.Tensor
    ctx_out_b: torch.Tensor
    ctx_off: torch.Tensor
    # Sizes and codes (plain ints and floats).
    n_layers: int
    d_model: int
    d_inner: int
    d_state: int
    dt_rank: int
    d_conv: int
    n_classes: int
    n_surface: int
    surface_hidden: int
    embed: int
    has_count: bool
    grid_w: int
    grid_p: int
    pos_cell: int
    pos_nx: int
    norm: int
    norm_eps: float
    readout: int
    dt_eps: float
    event: bool
    method: int
    ctx_grid: tuple
    ctx_n: int
    ctx_c: int
    ctx_silu: bool
    ctx_tau: float

    @property
    def record(self) -> int:
        """Floats per input record: id, gap, count and the surface."""
        return RECORD_HEAD + self.n_surface


def allocate_state(w: ModelStepWeights, n_streams: int, device) -> dict:
    """Zeroed per-stream state for :func:`model_step_triton` (float32 but the times; every tensor's first axis
    is the stream, so a stream is reset by zeroing its rows): ``conv`` (B, L, K, E), ``ssm`` (B, L, N, E), the
    pooling carries ``carry_sum`` (B, L + 1, D), ``carry_dt`` and ``carry_n`` (B, L + 1) (one slot per pooling, unused
    where the stride is 1), the readout's ``ro_sum`` (B, D), ``ro_w`` (B,) and ``ro_last`` (B, D); the context
    stage's map, ``ctx_h`` (B, V, ctx_c) the latest projected embedding of every token id, ``ctx_t`` (B, V)
    float64 its time, and ``ctx_now`` (B,) float64 the stream's time (one-element placeholders without a
    stage). An id never seen holds 0, so contributes 0."""
    f = dict(device=device, dtype=torch.float32)
    b, nl = n_streams, w.n_layers
    v, c = (int(np.prod(w.ctx_grid)), w.ctx_c) if w.ctx_n else (1, 1)
    return {
        "ctx_h": torch.zeros(b, v, c, **f),
        "ctx_t": torch.zeros(b, v, device=device, dtype=torch.float64),
        "ctx_now": torch.zeros(b, device=device, dtype=torch.float64),
        "conv": torch.zeros(b, nl, w.d_conv, w.d_inner, **f),
        "ssm": torch.zeros(b, nl, w.d_state, w.d_inner, **f),
        "carry_sum": torch.zeros(b, nl + 1, w.d_model, **f),
        "carry_dt": torch.zeros(b, nl + 1, **f),
        "carry_n": torch.zeros(b, nl + 1, **f),
        "ro_sum": torch.zeros(b, w.d_model, **f),
        "ro_w": torch.zeros(b, **f),
        "ro_last": torch.zeros(b, w.d_model, **f),
    }


def write_records(out: torch.Tensor, tokens, dt, counts=None, surfaces=None) -> torch.Tensor:
    """Write the kernel's input records into ``out`` ``(B, T, 3 + F)`` float32 (any strides: a transposed
    time-major buffer or a block of a staging buffer): id, gap, count (1 where ``counts`` is None) and surface
    of ``tokens`` (B, T), ``dt`` (B, T), ``counts`` (B, T), ``surfaces`` (B, T, F) -- torch tensors or numpy
    arrays, converted as they are copied (no full-size temporary). Returns ``out``."""
    field = lambda a: torch.as_tensor(a)  # noqa: E731 - numpy arrays become views, not copies
    out[..., 0].copy_(field(tokens))
    out[..., 1].copy_(field(dt))
    if counts is None:
        out[..., 2].fill_(1.0)
    else:
        out[..., 2].copy_(field(counts))
    if out.shape[-1] > RECORD_HEAD:
        out[..., RECORD_HEAD:].copy_(field(surfaces))
    return out


def pack_inputs(tokens: torch.Tensor, dt: torch.Tensor, counts: torch.Tensor | None = None,
                surfaces: torch.Tensor | None = None) -> torch.Tensor:
    """``tokens`` (B, T) ids, ``dt`` (B, T), ``counts`` (B, T) or None (1), ``surfaces`` (B, T, F) or None ->
    the kernel's input records ``(B, T, 3 + F)`` float32, on the tokens' device."""
    n_surface = 0 if surfaces is None else surfaces.shape[-1]
    out = torch.empty((*tokens.shape, RECORD_HEAD + n_surface), dtype=torch.float32, device=tokens.device)
    return write_records(out, tokens, dt, counts, surfaces)


def pack_inputs_time_major(tokens, dt, counts=None, surfaces=None, pin_memory: bool = False) -> torch.Tensor:
    """:func:`pack_inputs` in time-major order: ``tokens`` (B, T) ids, ``dt`` (B, T), ``counts`` (B, T) or None
    (1), ``surfaces`` (B, T, F) or None (torch tensors or numpy arrays) -> records ``(T, B, 3 + F)`` float32 on
    the host, pinned with ``pin_memory`` (needs CUDA). The tokens ``s .. s + n`` of every stream are then one
    contiguous slab, ``records[s:s + n]``: one asynchronous copy to the device. Each field is written straight
    into the result (one strided pass per field, no full-size temporary), which matters at thousands of
    streams (4 096 streams x 4 096 tokens x 53 floats is 3.6 GB)."""
    where = "pack_inputs_time_major"

    def arr(name, a, dims):
        if a is None:
            return None
        t = torch.as_tensor(a)
        if t.dim() != dims:
            raise ValueError(f"{where}: argument {name!r} must have {dims} dimensions; got shape {tuple(t.shape)}")
        return t

    tokens, dt = arr("tokens", tokens, 2), arr("dt", dt, 2)
    counts, surfaces = arr("counts", counts, 2), arr("surfaces", surfaces, 3)
    if tokens is None or dt is None:
        raise ValueError(f"{where}: arguments 'tokens' and 'dt' are required")
    batch, steps = tokens.shape
    for name, t in (("dt", dt), ("counts", counts), ("surfaces", surfaces)):
        if t is not None and tuple(t.shape[:2]) != (batch, steps):
            raise ValueError(f"{where}: argument {name!r} must start with the tokens' shape {(batch, steps)}; "
                             f"got {tuple(t.shape)}")
    n_surface = 0 if surfaces is None else surfaces.shape[2]
    out = torch.empty((steps, batch, RECORD_HEAD + n_surface), dtype=torch.float32, pin_memory=bool(pin_memory))
    write_records(out.transpose(0, 1), tokens, dt, counts, surfaces)
    return out


# ----------------------------------------------------------------------------------------------- pieces
@triton.jit
def _mm(x, w, DOT: tl.constexpr):
    """``x`` (S, I) @ ``w`` (I, J) -> (S, J) in float32: ``tl.dot`` (full precision) or a broadcast sum."""
    if DOT:
        return tl.dot(x, w, input_precision="ieee")
    else:
        return tl.sum(x[:, :, None] * w[None, :, :], axis=1)


@triton.jit
def _mat(ptr, ROWS: tl.constexpr, COLS: tl.constexpr, RP: tl.constexpr, CP: tl.constexpr, LD: tl.constexpr):
    """A (ROWS, COLS) block of a row-major matrix with leading dimension ``LD``, zero-padded to (RP, CP)."""
    r = tl.arange(0, RP)
    c = tl.arange(0, CP)
    return tl.load(ptr + r[:, None] * LD + c[None, :], mask=(r[:, None] < ROWS) & (c[None, :] < COLS), other=0.0)


@triton.jit
def _vec(ptr, N: tl.constexpr, NP: tl.constexpr):
    i = tl.arange(0, NP)
    return tl.load(ptr + i, mask=i < N, other=0.0)


@triton.jit
def _rows(ptr, idx, mb, D: tl.constexpr, DP: tl.constexpr):
    """Rows ``idx`` (S,) of a (., D) table -> (S, DP), zero for masked streams and padded columns."""
    d = tl.arange(0, DP)
    return tl.load(ptr + idx[:, None] * D + d[None, :], mask=mb[:, None] & (d[None, :] < D), other=0.0)


@triton.jit
def _norm(h, w_ptr, b_ptr, eps, D: tl.constexpr, DP: tl.constexpr, NORM: tl.constexpr):
    """RMSNorm (``NORM`` 0) or LayerNorm (1) of each row of ``h`` (S, DP) over its first D columns (the padded
    columns of ``h`` are zero and stay zero)."""
    md = tl.arange(0, DP) < D
    w = _vec(w_ptr, D, DP)
    if NORM == 0:
        ms = tl.sum(h * h, axis=1) / D
        return h * (1.0 / tl.sqrt(ms + eps))[:, None] * w[None, :]
    else:
        mean = tl.sum(h, axis=1) / D
        c = tl.where(md[None, :], h - mean[:, None], 0.0)
        var = tl.sum(c * c, axis=1) / D
        return c * (1.0 / tl.sqrt(var + eps))[:, None] * w[None, :] + _vec(b_ptr, D, DP)[None, :]


@triton.jit
def _pool(h, dtv, keep, b, mb, stride, slot, csum_ptr, cdt_ptr, cn_ptr,
          NSLOT: tl.constexpr, D: tl.constexpr, DP: tl.constexpr):
    """One token through pooling slot ``slot`` of stride ``stride``: ``(pooled (S, DP), Δt sum (S,), keep')``.
    The window's carry grows where the token is final (``keep``) and empties when it completes; where the token
    is not final it is left as it was (:func:`evmamba.model.pooling.carry_token`). Stride 1: ``h``, ``dtv``,
    ``keep`` unchanged, and the carry is neither read nor written."""
    d = tl.arange(0, DP)
    md = d < D
    on = mb & (stride > 1)
    row = b * NSLOT + slot
    cs = tl.load(csum_ptr + row[:, None] * D + d[None, :], mask=on[:, None] & md[None, :], other=0.0)
    cd = tl.load(cdt_ptr + row, mask=on, other=0.0)
    cn = tl.load(cn_ptr + row, mask=on, other=0.0)
    total = cs + h
    n = cn + 1.0
    dt_sum = cd + dtv
    complete = keep & (n == stride.to(tl.float32))
    grow = keep & (n != stride.to(tl.float32))
    put = on & keep
    # A read-modify-write of the carry: the threads that store an element need not be the ones that loaded it
    # (tl.dot layouts hold a vector in several threads), so every load finishes before any store.
    tl.debug_barrier()
    tl.store(csum_ptr + row[:, None] * D + d[None, :], tl.where(grow[:, None], total, 0.0),
             mask=put[:, None] & md[None, :])
    tl.store(cdt_ptr + row, tl.where(grow, dt_sum, 0.0), mask=put)
    tl.store(cn_ptr + row, tl.where(grow, n, 0.0), mask=put)
    return total / n[:, None], dt_sum, complete


# ----------------------------------------------------------------------------------------------- kernel
@triton.jit
def _token_step(
    pid, pos, inp_ptr, logits_ptr,
    conv_ptr, ssm_ptr, csum_ptr, cdt_ptr, cn_ptr, ro_sum_ptr, ro_w_ptr, ro_last_ptr,
    table_ptr, xt_ptr, yt_ptr, pt_ptr, post_ptr, cw_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
    nw_ptr, nb_ptr, inw_ptr, inb_ptr, convw_ptr, convb_ptr, xpw_ptr, dtpw_ptr, dtb_ptr, aneg_ptr, dsk_ptr,
    rate_ptr, outw_ptr, outb_ptr, fnw_ptr, fnb_ptr, headw_ptr, headb_ptr, strides_ptr,
    ciw_ptr, cib_ptr, cow_ptr, cob_ptr, coff_ptr, ch_ptr, ct_ptr, cnow_ptr,
    B, s_in_b, s_in_t, s_lo_b, s_lo_t, grid_w, grid_p, pos_cell, pos_nx, norm_eps, dt_eps,
    ctx_gw, ctx_gh, ctx_gp, ctx_tau,
    NL: tl.constexpr, D: tl.constexpr, E: tl.constexpr, N: tl.constexpr, R: tl.constexpr, K: tl.constexpr,
    C: tl.constexpr, F: tl.constexpr, H: tl.constexpr,
    BS: tl.constexpr, DP: tl.constexpr, EP: tl.constexpr, NP: tl.constexpr, RP: tl.constexpr,
    KP: tl.constexpr, CP: tl.constexpr, FP: tl.constexpr, HP: tl.constexpr,
    EMBED: tl.constexpr, HAS_COUNT: tl.constexpr, NORM: tl.constexpr, READOUT: tl.constexpr,
    EVENT: tl.constexpr, METHOD: tl.constexpr, DOT: tl.constexpr, FAST: tl.constexpr,
    CN: tl.constexpr, CC: tl.constexpr, CCP: tl.constexpr, CSILU: tl.constexpr,
):
    """One token of program ``pid``'s ``BS`` streams: the record at position ``pos`` of ``inp_ptr`` in, the
    logits at ``pos`` of ``logits_ptr`` out, the state updated in place."""
    b = pid.to(tl.int64) * BS + tl.arange(0, BS)
    mb = b < B
    d = tl.arange(0, DP)
    md = d < D
    e = tl.arange(0, EP)
    me = e < E
    n = tl.arange(0, NP)
    mn = n < N
    kk = tl.arange(0, KP)
    NSLOT: tl.constexpr = NL + 1
    XW: tl.constexpr = R + 2 * N  # x_proj's row width (a constexpr is set once, outside the layer loop)

    # ---- the token's record: id, gap, count (and the surface)
    rec = inp_ptr + b * s_in_b + pos * s_in_t
    tok = tl.load(rec, mask=mb, other=0.0).to(tl.int32)
    dtv = tl.load(rec + 1, mask=mb, other=0.0)

    # ---- embedding (TokenEmbedding.forward)
    if EMBED == 0:
        h = _rows(table_ptr, tok, mb, D, DP)
    elif EMBED == 1:
        xy = tok // grid_p
        h = _rows(xt_ptr, xy % grid_w, mb, D, DP) + _rows(yt_ptr, xy // grid_w, mb, D, DP)
        h = h + _rows(pt_ptr, tok % grid_p, mb, D, DP)
    else:
        f = tl.arange(0, FP)
        s = tl.load(rec[:, None] + 3 + f[None, :], mask=mb[:, None] & (f[None, :] < F), other=0.0)
        if H > 0:
            hid = _mm(s, _mat(w1_ptr, F, H, FP, HP, H), DOT) + _vec(b1_ptr, H, HP)[None, :]
            hid = hid * sigmoid(hid, FAST)
            h = _mm(hid, _mat(w2_ptr, H, D, HP, DP, D), DOT) + _vec(b2_ptr, D, DP)[None, :]
        else:
            h = _mm(s, _mat(w1_ptr, F, D, FP, DP, D), DOT) + _vec(b1_ptr, D, DP)[None, :]
        xy = tok // grid_p
        cell = ((xy // grid_w) // pos_cell) * pos_nx + (xy % grid_w) // pos_cell
        h = (h + _rows(post_ptr, cell, mb, D, DP)) + _rows(pt_ptr, tok % grid_p, mb, D, DP)
    if HAS_COUNT:
        cnt = tl.load(rec + 2, mask=mb, other=1.0)
        h = h + tl.log(tl.maximum(cnt, 1.0))[:, None] * _vec(cw_ptr, D, DP)[None, :]

    # ---- the context stage (ContextStage.step): every token, before any pooling, so always committed
    if CN > 0:
        cc = tl.arange(0, CCP)
        m_bc = mb[:, None] & (cc[None, :] < CC)
        hc = _mm(h, _mat(ciw_ptr, D, CC, DP, CCP, CC), DOT) + _vec(cib_ptr, CC, CCP)[None, :]
        if CSILU:
            hc = hc * sigmoid(hc, FAST)
        now = tl.load(cnow_ptr + b, mask=mb, other=0.0) + dtv.to(tl.float64)  # times in float64, as the stage
        cells = ctx_gw * ctx_gh * ctx_gp
        h_map = ch_ptr + b * cells * CC
        t_map = ct_ptr + b * cells
        xy = tok // ctx_gp
        x0 = xy % ctx_gw
        y0 = xy // ctx_gw
        acc = tl.zeros([BS, DP], dtype=tl.float32)
        for k in range(CN):
            nx = x0 + tl.load(coff_ptr + 3 * k)
            ny = y0 + tl.load(coff_ptr + 3 * k + 1)
            inside = mb & (nx >= 0) & (nx < ctx_gw) & (ny >= 0) & (ny < ctx_gh)
            cell = (ny * ctx_gw + nx) * ctx_gp + tl.load(coff_ptr + 3 * k + 2)
            # The token's own cell holds its new value and time (the stage writes them before it gathers);
            # the others are read from the map, which is written only after every read below.
            own = inside & (cell == tok)
            other = inside & (cell != tok)
            v = tl.load(h_map[:, None] + cell[:, None] * CC + cc[None, :], mask=other[:, None] & m_bc, other=0.0)
            t_then = tl.load(t_map + cell, mask=other, other=0.0)
            v = tl.where(own[:, None], hc, v)
            t_then = tl.where(own, now, t_then)
            # Cells outside the grid contribute 0; cells never seen hold 0 (any decay times 0).
            decay = tl.where(inside, tl.exp(((t_then - now) / ctx_tau).to(tl.float32)), 0.0)
            acc += _mm(v * decay[:, None], _mat(cow_ptr + k * CC * D, CC, D, CCP, DP, D), DOT)
        h = h + acc + _vec(cob_ptr, D, DP)[None, :]
        tl.debug_barrier()  # the map's reads above come before its writes, whichever thread does them
        tl.store(h_map[:, None] + tok[:, None] * CC + cc[None, :], hc, mask=m_bc)
        tl.store(t_map + tok, now, mask=mb)
        tl.store(cnow_ptr + b, now, mask=mb)

    # ---- the input pooling (slot 0), then every layer followed by its pooling
    keep = mb
    h, dtv, keep = _pool(h, dtv, keep, b, mb, tl.load(strides_ptr), 0, csum_ptr, cdt_ptr, cn_ptr, NSLOT, D, DP)
    m_ke = (kk[:, None] < K) & me[None, :]
    m_ne = mn[:, None] & me[None, :]
    for li in tl.static_range(NL):
        xn = _norm(h, nw_ptr + li * D, nb_ptr + li * D, norm_eps, D, DP, NORM)
        inw = inw_ptr + li * D * 2 * E
        inb = inb_ptr + li * 2 * E
        x = _mm(xn, _mat(inw, D, E, DP, EP, 2 * E), DOT) + _vec(inb, E, EP)[None, :]
        z = _mm(xn, _mat(inw + E, D, E, DP, EP, 2 * E), DOT) + _vec(inb + E, E, EP)[None, :]

        # Causal convolution: the window is the state shifted by one with the new input last.
        cbase = conv_ptr + (b * NL + li) * (K * E)
        cptr = cbase[:, None, None] + kk[None, :, None] * E + e[None, None, :]
        m_w = mb[:, None, None] & m_ke[None, :, :]
        old = tl.load(cptr + E, mask=m_w & (kk[None, :, None] + 1 < K), other=0.0)
        window = tl.where(kk[None, :, None] == K - 1, x[:, None, :], old)
        # Every element is read above before any is overwritten below, whichever thread holds it.
        tl.debug_barrier()
        tl.store(cptr, window, mask=m_w & keep[:, None, None])
        cw = _mat(convw_ptr + li * K * E, K, E, KP, EP, E)
        xc = tl.sum(window * cw[None, :, :], axis=1) + _vec(convb_ptr + li * E, E, EP)[None, :]
        xc = xc * sigmoid(xc, FAST)

        # x_proj -> (dt_low, B, C); dt_proj + bias -> softplus: the input step.
        xpw = xpw_ptr + li * E * XW
        dt_low = _mm(xc, _mat(xpw, E, R, EP, RP, XW), DOT)
        bm = _mm(xc, _mat(xpw + R, E, N, EP, NP, XW), DOT)
        cm = _mm(xc, _mat(xpw + R + N, E, N, EP, NP, XW), DOT)
        dtb = softplus(_mm(dt_low, _mat(dtpw_ptr + li * R * E, R, E, RP, EP, E), DOT)
                       + _vec(dtb_ptr + li * E, E, EP)[None, :], FAST)
        if EVENT:
            dta = dtv[:, None] * _vec(rate_ptr + li * E, E, EP)[None, :]
        else:
            dta = dtb

        # State update (S, N, E), C . h, D skip and gate.
        a = tl.load(aneg_ptr + li * N * E + n[:, None] * E + e[None, :], mask=m_ne, other=-1.0)[None, :, :]
        abar = transition(dta[:, None, :], a, a * 1.4426950408889634, METHOD, FAST)
        if METHOD == 3:
            bx = xc[:, None, :] * bm[:, :, None]
        else:
            bx = input_factor(dtb[:, None, :], a, 1.0 / a, METHOD, FAST) * (xc[:, None, :] * bm[:, :, None])
        sptr = ssm_ptr + (b * NL + li)[:, None, None] * (N * E) + n[None, :, None] * E + e[None, None, :]
        m_s = mb[:, None, None] & m_ne[None, :, :]
        hs = abar * tl.load(sptr, mask=m_s, other=0.0) + bx
        tl.debug_barrier()  # read-modify-write of the state: loads before stores, as above
        tl.store(sptr, hs, mask=m_s & keep[:, None, None])
        y = tl.sum(hs * cm[:, :, None], axis=1) + _vec(dsk_ptr + li * E, E, EP)[None, :] * xc
        y = y * (z * sigmoid(z, FAST))
        out = _mm(y, _mat(outw_ptr + li * E * D, E, D, EP, DP, D), DOT) + _vec(outb_ptr + li * D, D, DP)[None, :]
        h = h + out
        h, dtv, keep = _pool(h, dtv, keep, b, mb, tl.load(strides_ptr + li + 1), li + 1, csum_ptr, cdt_ptr, cn_ptr,
                             NSLOT, D, DP)

    # ---- final norm, running readout, head
    y = _norm(h, fnw_ptr, fnb_ptr, norm_eps, D, DP, NORM)
    m_bd = mb[:, None] & md[None, :]
    if READOUT == 1:
        feats = y
        tl.store(ro_last_ptr + b[:, None] * D + d[None, :], y, mask=m_bd & keep[:, None])
    else:
        if READOUT == 0:
            wt = tl.full([BS], 1.0, tl.float32)
        else:
            wt = dtv + dt_eps
        rs = tl.load(ro_sum_ptr + b[:, None] * D + d[None, :], mask=m_bd, other=0.0)
        rw = tl.load(ro_w_ptr + b, mask=mb, other=0.0)
        acc = rs + wt[:, None] * y
        feats = acc / tl.maximum(rw + wt, 1e-30)[:, None]
        tl.debug_barrier()  # read-modify-write of the running sums: loads before stores
        tl.store(ro_sum_ptr + b[:, None] * D + d[None, :], acc, mask=m_bd & keep[:, None])
        tl.store(ro_w_ptr + b, rw + wt, mask=mb & keep)
    c = tl.arange(0, CP)
    logits = _mm(feats, _mat(headw_ptr, D, C, DP, CP, C), DOT) + _vec(headb_ptr, C, CP)[None, :]
    tl.store(logits_ptr + b[:, None] * s_lo_b + pos * s_lo_t + c[None, :], logits,
             mask=mb[:, None] & (c[None, :] < C))


@triton.jit
def model_step_kernel(
    inp_ptr, pos_ptr, counter_ptr, logits_ptr,
    conv_ptr, ssm_ptr, csum_ptr, cdt_ptr, cn_ptr, ro_sum_ptr, ro_w_ptr, ro_last_ptr,
    table_ptr, xt_ptr, yt_ptr, pt_ptr, post_ptr, cw_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
    nw_ptr, nb_ptr, inw_ptr, inb_ptr, convw_ptr, convb_ptr, xpw_ptr, dtpw_ptr, dtb_ptr, aneg_ptr, dsk_ptr,
    rate_ptr, outw_ptr, outb_ptr, fnw_ptr, fnb_ptr, headw_ptr, headb_ptr, strides_ptr,
    ciw_ptr, cib_ptr, cow_ptr, cob_ptr, coff_ptr, ch_ptr, ct_ptr, cnow_ptr,
    B, s_in_b, s_in_t, s_lo_b, s_lo_t, grid_w, grid_p, pos_cell, pos_nx, norm_eps, dt_eps,
    ctx_gw, ctx_gh, ctx_gp, ctx_tau,
    NL: tl.constexpr, D: tl.constexpr, E: tl.constexpr, N: tl.constexpr, R: tl.constexpr, K: tl.constexpr,
    C: tl.constexpr, F: tl.constexpr, H: tl.constexpr,
    BS: tl.constexpr, DP: tl.constexpr, EP: tl.constexpr, NP: tl.constexpr, RP: tl.constexpr,
    KP: tl.constexpr, CP: tl.constexpr, FP: tl.constexpr, HP: tl.constexpr,
    EMBED: tl.constexpr, HAS_COUNT: tl.constexpr, NORM: tl.constexpr, READOUT: tl.constexpr,
    EVENT: tl.constexpr, METHOD: tl.constexpr, DOT: tl.constexpr, FAST: tl.constexpr, ADVANCE: tl.constexpr,
    CN: tl.constexpr, CC: tl.constexpr, CCP: tl.constexpr, CSILU: tl.constexpr,
):
    pid = tl.program_id(0)
    pos = tl.load(pos_ptr)
    _token_step(
        pid, pos, inp_ptr, logits_ptr,
        conv_ptr, ssm_ptr, csum_ptr, cdt_ptr, cn_ptr, ro_sum_ptr, ro_w_ptr, ro_last_ptr,
        table_ptr, xt_ptr, yt_ptr, pt_ptr, post_ptr, cw_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
        nw_ptr, nb_ptr, inw_ptr, inb_ptr, convw_ptr, convb_ptr, xpw_ptr, dtpw_ptr, dtb_ptr, aneg_ptr, dsk_ptr,
        rate_ptr, outw_ptr, outb_ptr, fnw_ptr, fnb_ptr, headw_ptr, headb_ptr, strides_ptr,
        ciw_ptr, cib_ptr, cow_ptr, cob_ptr, coff_ptr, ch_ptr, ct_ptr, cnow_ptr,
        B, s_in_b, s_in_t, s_lo_b, s_lo_t, grid_w, grid_p, pos_cell, pos_nx, norm_eps, dt_eps,
        ctx_gw, ctx_gh, ctx_gp, ctx_tau,
        NL, D, E, N, R, K, C, F, H, BS, DP, EP, NP, RP, KP, CP, FP, HP,
        EMBED, HAS_COUNT, NORM, READOUT, EVENT, METHOD, DOT, FAST, CN, CC, CCP, CSILU,
    )

    if ADVANCE:
        # The last program to finish moves the position on (all have read it by then) and re-arms the count.
        done = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
        last = done == tl.num_programs(0) - 1
        tl.store(pos_ptr, pos + 1, mask=last)
        tl.store(counter_ptr, 0, mask=last)


#: Tags of the serving loop's records: token ``t``'s record carries ``t % TAG_MODULUS + 1`` (never 0, the value
#: a fresh ring holds; a slot is rewritten every turn of the ring, long before a tag could repeat).
TAG_MODULUS = 2**31 - 1


def record_tag(t):
    """The tag that marks token ``t``'s record in the serving loop's ring (:func:`model_serve_triton`); ``t`` an
    int or an integer array (the kernel computes the same from its count of tokens served)."""
    return t % TAG_MODULUS + 1


@triton.jit(do_not_specialize=["start"])
def model_serve_kernel(
    inp_ptr, logits_ptr, ctrl_ptr, done_ptr, stage_ptr, start, ring,
    conv_ptr, ssm_ptr, csum_ptr, cdt_ptr, cn_ptr, ro_sum_ptr, ro_w_ptr, ro_last_ptr,
    table_ptr, xt_ptr, yt_ptr, pt_ptr, post_ptr, cw_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
    nw_ptr, nb_ptr, inw_ptr, inb_ptr, convw_ptr, convb_ptr, xpw_ptr, dtpw_ptr, dtb_ptr, aneg_ptr, dsk_ptr,
    rate_ptr, outw_ptr, outb_ptr, fnw_ptr, fnb_ptr, headw_ptr, headb_ptr, strides_ptr,
    ciw_ptr, cib_ptr, cow_ptr, cob_ptr, coff_ptr, ch_ptr, ct_ptr, cnow_ptr,
    B, s_in_b, s_in_t, s_lo_b, s_lo_t, grid_w, grid_p, pos_cell, pos_nx, norm_eps, dt_eps,
    ctx_gw, ctx_gh, ctx_gp, ctx_tau,
    NL: tl.constexpr, D: tl.constexpr, E: tl.constexpr, N: tl.constexpr, R: tl.constexpr, K: tl.constexpr,
    C: tl.constexpr, F: tl.constexpr, H: tl.constexpr,
    BS: tl.constexpr, DP: tl.constexpr, EP: tl.constexpr, NP: tl.constexpr, RP: tl.constexpr,
    KP: tl.constexpr, CP: tl.constexpr, FP: tl.constexpr, HP: tl.constexpr,
    EMBED: tl.constexpr, HAS_COUNT: tl.constexpr, NORM: tl.constexpr, READOUT: tl.constexpr,
    EVENT: tl.constexpr, METHOD: tl.constexpr, DOT: tl.constexpr, FAST: tl.constexpr, RECP: tl.constexpr,
    CN: tl.constexpr, CC: tl.constexpr, CCP: tl.constexpr, CSILU: tl.constexpr,
    TAG_MOD: tl.constexpr, RELEASE: tl.constexpr,
):
    """The serving loop (:func:`model_serve_triton`): one program that stays resident and steps its streams
    through every token whose records the host has written, until the host asks it to stop.

    Each element of a record is one 64-bit word, the float32 value in its low half and the token's tag in its
    high half. The program polls the next slot with volatile loads, one word per thread and all at once, and
    steps the token as soon as every word carries its tag: the host writes each value before its tag, and an
    aligned 64-bit word is read whole, so a tagged word holds the token's value. That is one trip over the bus
    per token (no separate "published" count to read first). The values are first copied into ``stage``
    (device memory, ``(B, 3 + F)``) and the step reads them from there (the step's own loads, with many
    elements per thread, would be serialised over the bus, and the ring's cache lines may be stale).

    ``ctrl`` (host memory) is read with every poll only to stop: ``-k - 1`` ends the loop once ``k`` tokens are
    served. The logits go to the host ring with plain stores; the host knows they are complete when none of
    the token's values still holds the marker it wrote there before the record (no fence per token). With
    ``RELEASE`` the program also raises ``done`` to the count served after each token with a system-scope
    release, which pushes the logits out to the host at once (faster in practice, not needed for correctness);
    without it ``done`` is written once, at the end."""
    REC: tl.constexpr = F + 3
    j = tl.arange(0, BS * RECP)
    jb = tl.program_id(0).to(tl.int64) * BS + j // RECP
    jf = j % RECP
    m_stage = (jb < B) & (jf < REC)
    served = start.to(tl.int64)
    running = served >= 0
    while running:
        slot = served % ring
        word = tl.load(inp_ptr + jb * s_in_b + slot * s_in_t + jf, mask=m_stage, other=0, volatile=True)
        c = tl.load(ctrl_ptr, volatile=True)
        tag = served % TAG_MOD + 1
        fresh = tl.where(m_stage, (word >> 32) == tag, True).to(tl.int32)
        if tl.min(fresh, axis=0) == 1:
            x = word.to(tl.int32).to(tl.float32, bitcast=True)  # the low half: the value's bits
            tl.store(stage_ptr + jb * REC + jf, x, mask=m_stage)
            tl.debug_barrier()  # the staged records are complete before any thread reads them
            _token_step(
                tl.program_id(0), slot, stage_ptr, logits_ptr,
                conv_ptr, ssm_ptr, csum_ptr, cdt_ptr, cn_ptr, ro_sum_ptr, ro_w_ptr, ro_last_ptr,
                table_ptr, xt_ptr, yt_ptr, pt_ptr, post_ptr, cw_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                nw_ptr, nb_ptr, inw_ptr, inb_ptr, convw_ptr, convb_ptr, xpw_ptr, dtpw_ptr, dtb_ptr, aneg_ptr,
                dsk_ptr, rate_ptr, outw_ptr, outb_ptr, fnw_ptr, fnb_ptr, headw_ptr, headb_ptr, strides_ptr,
                ciw_ptr, cib_ptr, cow_ptr, cob_ptr, coff_ptr, ch_ptr, ct_ptr, cnow_ptr,
                B, REC, 0, s_lo_b, s_lo_t, grid_w, grid_p, pos_cell, pos_nx, norm_eps, dt_eps,
                ctx_gw, ctx_gh, ctx_gp, ctx_tau,
                NL, D, E, N, R, K, C, F, H, BS, DP, EP, NP, RP, KP, CP, FP, HP,
                EMBED, HAS_COUNT, NORM, READOUT, EVENT, METHOD, DOT, FAST, CN, CC, CCP, CSILU,
            )
            # The next token's staging waits for this one's reads of the stage.
            tl.debug_barrier()
            served += 1
            if RELEASE:
                tl.atomic_xchg(done_ptr, served, sem="release", scope="sys")
        else:
            running = (c >= 0) | (served < -c - 1)
    tl.store(done_ptr, served)


# ----------------------------------------------------------------------------------------------- launch
def _pad(n: int, dot: bool) -> int:
    return max(next_pow2(n), 16 if dot else 1)


def default_block_streams(n_streams: int) -> int:
    """Streams per program: 1 for one stream (latency), 16 (``tl.dot`` tiles) from 16 streams on, the next
    power of two in between."""
    return min(16, next_pow2(n_streams))


def _check_step_args(where: str, w: ModelStepWeights, state: dict, inputs, logits, dev,
                     record_dtype: torch.dtype = torch.float32) -> tuple[int, int]:
    """Shapes, dtypes and devices of a launch's records, logits, state and weights (not values: safe inside a
    graph capture). ``dev`` is where the state and weights live; ``record_dtype`` the records' dtype (the
    serving loop's are tagged int64). Returns ``(B, T)``."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 3 or inputs.shape[-1] != w.record:
        got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"{where}: inputs must have shape (B, T, {w.record}); got {got}")
    batch, steps, _ = inputs.shape
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{where}: logits must be a torch.Tensor; got {type(logits).__name__}")
    if not INTERPRETING and dev.type != "cuda":
        raise ValueError(f"{where}: the state must be on a CUDA device (the Triton kernel runs on the GPU); "
                         f"got {dev}")
    for name, t in (("inputs", inputs), ("logits", logits)):
        mapped = dev.type == "cuda" and t.device.type == "cpu" and t.is_pinned()
        if t.device != dev and not mapped:
            raise ValueError(f"{where}: {name} must be on {dev} or in pinned host memory; got {t.device}")
    if inputs.dtype != record_dtype or inputs.stride(-1) != 1:
        name = str(record_dtype).replace("torch.", "")
        raise ValueError(f"{where}: inputs must be {name} with a contiguous last axis; got {inputs.dtype}")
    if tuple(logits.shape) != (batch, steps, w.n_classes) or logits.dtype != torch.float32 or logits.stride(-1) != 1:
        raise ValueError(f"{where}: logits must be float32 of shape {(batch, steps, w.n_classes)}; "
                         f"got {logits.dtype} {tuple(logits.shape)}")
    want = allocate_state(w, 0, "meta")
    for key, t in want.items():
        got = state.get(key)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (batch, *t.shape[1:]) or \
                got.dtype != t.dtype or not got.is_contiguous() or got.device != dev:
            name = str(t.dtype).replace("torch.", "")
            raise ValueError(f"{where}: state[{key!r}] must be a contiguous {name} tensor of shape "
                             f"{(batch, *t.shape[1:])} on {dev}")
    for t in tuple(x for x in w if isinstance(x, torch.Tensor)):
        if t.device != dev:
            raise ValueError(f"{where}: every tensor must be on {dev}; got one on {t.device}")
    return batch, steps


def _launch_args(w: ModelStepWeights, state: dict, inputs, logits, bs: int, num_warps: int | None) -> tuple:
    """The arguments both kernels share after their own leading ones: ``(args, constexprs)``."""
    dot = bs >= 16
    if num_warps is None:
        num_warps = 8 if dot else 4
    elif num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps must be 1, 2, 4, 8 or 16; got {num_warps!r}")
    hid = w.surface_hidden
    args = (
        state["conv"], state["ssm"], state["carry_sum"], state["carry_dt"], state["carry_n"], state["ro_sum"],
        state["ro_w"], state["ro_last"],
        w.table, w.x_tab, w.y_tab, w.p_tab, w.pos_tab, w.count_w, w.s_w1t, w.s_b1, w.s_w2t, w.s_b2,
        w.norm_w, w.norm_b, w.in_wt, w.in_b, w.conv_w, w.conv_b, w.xp_wt, w.dtp_wt, w.dt_b, w.a_neg, w.d_skip,
        w.rate, w.out_wt, w.out_b, w.fnorm_w, w.fnorm_b, w.head_wt, w.head_b, w.strides,
        w.ctx_in_wt, w.ctx_in_b, w.ctx_out_wt, w.ctx_out_b, w.ctx_off, state["ctx_h"], state["ctx_t"],
        state["ctx_now"],
        inputs.shape[0], inputs.stride(0), inputs.stride(1), logits.stride(0), logits.stride(1),
        w.grid_w, w.grid_p, w.pos_cell, w.pos_nx, float(w.norm_eps), float(w.dt_eps), *w.ctx_grid,
        float(w.ctx_tau),
    )
    consts = dict(
        NL=w.n_layers, D=w.d_model, E=w.d_inner, N=w.d_state, R=w.dt_rank, K=w.d_conv, C=w.n_classes,
        F=w.n_surface, H=hid,
        BS=bs, DP=_pad(w.d_model, dot), EP=_pad(w.d_inner, dot), NP=_pad(w.d_state, dot), RP=_pad(w.dt_rank, dot),
        KP=next_pow2(w.d_conv), CP=_pad(w.n_classes, dot), FP=_pad(max(w.n_surface, 1), dot),
        HP=_pad(max(hid, 1), dot),
        EMBED=w.embed, HAS_COUNT=bool(w.has_count), NORM=w.norm, READOUT=w.readout, EVENT=bool(w.event),
        METHOD=w.method, DOT=dot, FAST=not INTERPRETING, num_warps=num_warps,
        CN=w.ctx_n, CC=max(w.ctx_c, 1), CCP=_pad(max(w.ctx_c, 1), dot), CSILU=bool(w.ctx_silu),
    )
    return args, consts


def _block_streams(where: str, batch: int, block_streams) -> int:
    """Streams per program: the default for ``batch``, or ``block_streams`` (any integer type) checked."""
    if block_streams is None:
        return default_block_streams(batch)
    if isinstance(block_streams, bool) or not isinstance(block_streams, numbers.Integral) or block_streams < 1 \
            or int(block_streams) & (int(block_streams) - 1):
        raise ValueError(f"{where}: block_streams must be a power of two; got {block_streams!r}")
    return int(block_streams)


def model_step_triton(w: ModelStepWeights, state: dict, inputs: torch.Tensor, pos: torch.Tensor,
                      logits: torch.Tensor, counter: torch.Tensor | None = None, block_streams: int | None = None,
                      num_warps: int | None = None) -> None:
    """Advance ``B`` streams by one token in one launch.

    ``inputs`` ``(B, T, 3 + F)`` float32 records (:func:`pack_inputs`); ``pos`` ``(1,)`` int64 on the device:
    the token position read in ``inputs`` and written in ``logits`` ``(B, T, C)`` float32. Both are read and
    written through their strides (only the last axis must be contiguous), so a time-major buffer ``(T, B, .)``
    is passed as its view ``buffer.transpose(0, 1)`` (what
    :meth:`~evmamba.streaming.gpu_step.GraphStepper.run_records` does with ``time_major=True``); the results
    are the same, only the addresses differ. ``state`` from
    :func:`allocate_state`, updated in place. With ``counter`` (a zeroed ``(1,)`` int32 tensor) the kernel
    advances ``pos`` by one itself. ``block_streams``: streams per program (a power of two; default
    :func:`default_block_streams`). Shapes and devices are checked, not values (safe inside a graph capture).

    ``inputs`` and ``logits`` may also be pinned host tensors while everything else is on the GPU (zero-copy:
    the kernel reads the records and writes the logits over the bus, no copies around the launch; an
    experiment for the batch-1 latency, see ``evmamba bench stream``).
    """
    where = "model_step_triton"
    if not isinstance(pos, torch.Tensor):
        raise TypeError(f"{where}: pos must be a torch.Tensor; got {type(pos).__name__}")
    if tuple(pos.shape) != (1,) or pos.dtype != torch.int64:
        raise ValueError(f"{where}: pos must be a (1,) int64 tensor; got {pos.dtype} {tuple(pos.shape)}")
    batch, _ = _check_step_args(where, w, state, inputs, logits, pos.device)
    if counter is not None and (tuple(counter.shape) != (1,) or counter.dtype != torch.int32):
        raise ValueError(f"{where}: counter must be a (1,) int32 tensor")
    bs = _block_streams(where, batch, block_streams)
    try:
        args, consts = _launch_args(w, state, inputs, logits, bs, num_warps)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    model_step_kernel[(triton.cdiv(batch, bs),)](
        inputs, pos, pos if counter is None else counter, logits, *args, ADVANCE=counter is not None, **consts)


#: Most streams :func:`model_serve_triton` serves: one program holds them all (``tl.dot`` blocks of 16).
MAX_SERVE_STREAMS = 16


def model_serve_triton(w: ModelStepWeights, state: dict, inputs: torch.Tensor, logits: torch.Tensor,
                       ctrl: torch.Tensor, done: torch.Tensor, stage: torch.Tensor, start: int = 0,
                       num_warps: int | None = None, release: bool = False) -> None:
    """Launch the serving loop: one resident program that steps ``B <= 16`` streams through every token the
    host writes, with no launch per token (the batch-1 latency path of the stream loop,
    :class:`~evmamba.streaming.gpu_serve.ServeStepper`).

    ``inputs`` ``(B, ring, 3 + F)`` int64 and ``logits`` ``(B, ring, C)`` float32 are rings in pinned host
    memory: token ``t``'s records are read from, and its logits written to, slot ``t % ring``. Each int64 of
    ``inputs`` is a tagged value: the float32 record value's bits in the low 32 bits, ``record_tag(t)`` in the
    high 32 (:func:`tag_records`); the host writes a slot's values before its tags, and the kernel steps token
    ``t`` once all its words carry ``t``'s tag. Before publishing a token the host fills its logits slot with
    :data:`LOGITS_MARK`'s bits; the token is served once no value of the slot holds them (no value the model
    computes does: the marker is a signalling NaN, which arithmetic never returns).

    ``ctrl`` and ``done`` are ``(1,)`` int64 pinned host tensors: the host keeps ``ctrl[0]`` at the count of
    tokens written and asks the loop to end with ``ctrl[0] = -count - 1`` (it serves every token written
    first); the kernel writes the count served into ``done[0]`` when it ends, and with ``release`` after every
    token too, with a system-scope release (a fence per token: the host does not need the count, but the fence
    gets the logits to it sooner). ``stage`` is a
    ``(B, 3 + F)`` float32 scratch tensor beside the state (the kernel copies each token's records there).
    ``start``: the first token's number (the count served so far by earlier loops on this ring; the state in
    ``state`` is where those tokens left it).

    On a GPU the launch returns at once and the kernel runs until stopped: the caller must stop it (and wait
    for its stream) before anything synchronises the whole device. Under ``TRITON_INTERPRET=1`` the launch
    runs the loop to its end before returning, so ``ctrl`` must already hold the stop.
    """
    where = "model_serve_triton"
    for name, t in (("ctrl", ctrl), ("done", done)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (1,) or t.dtype != torch.int64:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{where}: {name} must be a (1,) int64 tensor; got {got}")
    dev = state["conv"].device if isinstance(state.get("conv"), torch.Tensor) else None
    if dev is None:
        raise ValueError(f"{where}: state must come from allocate_state")
    for name, t in (("inputs", inputs), ("logits", logits), ("ctrl", ctrl), ("done", done)):
        if isinstance(t, torch.Tensor) and dev.type == "cuda" and not (t.device.type == "cpu" and t.is_pinned()):
            raise ValueError(f"{where}: {name} must be in pinned host memory (the host writes or reads it while "
                             f"the kernel runs); got {'unpinned host memory' if t.device.type == 'cpu' else t.device}")
    batch, ring = _check_step_args(where, w, state, inputs, logits, dev, record_dtype=torch.int64)
    if not isinstance(stage, torch.Tensor) or tuple(stage.shape) != (batch, w.record) or \
            stage.dtype != torch.float32 or not stage.is_contiguous() or stage.device != dev:
        got = f"{stage.dtype} {tuple(stage.shape)} on {stage.device}" if isinstance(stage, torch.Tensor) else \
            type(stage).__name__
        raise ValueError(f"{where}: stage must be a contiguous float32 tensor of shape {(batch, w.record)} on {dev}; "
                         f"got {got}")
    if batch > MAX_SERVE_STREAMS:
        raise ValueError(f"{where}: serves at most {MAX_SERVE_STREAMS} streams (one program); got {batch}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"{where}: start must be an int >= 0; got {start!r}")
    try:
        args, consts = _launch_args(w, state, inputs, logits, default_block_streams(batch), num_warps)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    model_serve_kernel[(1,)](inputs, logits, ctrl, done, stage, start, ring, *args, RECP=next_pow2(w.record),
                             TAG_MOD=TAG_MODULUS, RELEASE=bool(release), **consts)


#: What the host writes into a logits slot of the serving loop before publishing its token: a signalling NaN
#: (float32 bits ``0x7FBADBAD``), a value no arithmetic returns, so a slot free of it holds the token's logits.
LOGITS_MARK = 0x7FBADBAD


def tag_records(values: np.ndarray, first: int) -> np.ndarray:
    """Tagged int64 words of the serving loop's ring (:func:`model_serve_triton`) for records ``values``
    ``(T, ..., 3 + F)`` float32 of tokens ``first .. first + T - 1``: the value's bits low, the tag high."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    tags = record_tag(np.arange(first, first + values.shape[0], dtype=np.int64))
    tags = tags.reshape((-1,) + (1,) * (values.ndim - 1))
    return (tags << 32) | values.view(np.uint32).astype(np.int64)


__all__ = ["DISCRETIZATIONS", "EMBED_CODES", "LOGITS_MARK", "MAX_SERVE_STREAMS", "METHOD_CODES", "NORM_CODES",
           "READOUT_CODES", "TAG_MODULUS", "ModelStepWeights", "allocate_state", "default_block_streams",
           "model_serve_triton", "model_step_triton", "pack_inputs", "pack_inputs_time_major", "record_tag",
           "tag_records", "write_records"]
