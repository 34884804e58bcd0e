"""The compiled CPU step of a whole classifier for a run of tokens (numba), behind
:class:`evmamba.streaming.fast_step.FastStepper`.

One call advances one stream by ``T`` tokens and writes the logits after each requested token. Everything a
token needs -- embedding lookup, the context stage (its neighbour map kept per stream), each layer's norm,
``in_proj``, the causal convolution, SiLU, ``x_proj``, ``dt_proj``, the discretization, the state update,
``C . h``, the ``D`` skip, the gate, ``out_proj``, the residual, the event pooling windows, the running
readout and the head -- runs here, on weights exported once to contiguous float32 arrays
(:func:`evmamba.streaming.fast_step.export_weights`).

Layouts are chosen so that the compiler can vectorise without reassociating sums (``fastmath`` stays off):
every matrix is stored input-major (``W.T``), so a product is a sequence of ``out[:] += x[i] * W_T[i, :]``
updates over contiguous memory, and the states are stored ``(K, E)`` and ``(N, E)`` so that the state update
runs along the ``E`` channels. The discretization and the float32 exponentials of the state update (the hot
spot: ``E * N`` per layer and token) come from :mod:`evmamba.kernels.numba_discretization`, shared with the
CPU scan; their few units in the last place are well inside the 1e-5 agreement required with
:meth:`~evmamba.model.classifier.EventClassifier.step`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .numba_discretization import JIT as _JIT
from .numba_discretization import fexp, fexpm1, flog1p, input_factor, silu, softplus, transition

READOUT_CODES = {"mean": 0, "last": 1, "dt_mean": 2}
NORM_CODES = {"rms": 0, "layer": 1}
EMBED_CODES = {"table": 0, "factorised": 1, "surface": 2}

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)


@njit(**_JIT, inline="always")
def _update_row(srow, arow, dta, dtb, xc, bn, cn, y, method):
    """State row ``n`` over the channels: ``h = Abar h + (Bbar/B * x) B[n]``; ``y += h C[n]``."""
    for d in range(srow.size):
        a = transition(dta[d] * arow[d], method, fexp)
        fac = input_factor(dtb[d], arow[d], method, fexpm1)
        hh = a * srow[d] + (fac * xc[d]) * bn
        srow[d] = hh
        y[d] += hh * cn


@njit(**_JIT)
def _norm(h, w, b, kind, eps, out):
    """RMSNorm (``kind`` 0) or LayerNorm (1) of ``h`` ``(D,)`` into ``out``."""
    d = h.size
    if kind == 0:
        ss = _F0
        for j in range(d):
            ss += h[j] * h[j]
        inv = np.float32(1.0) / np.float32(math.sqrt(ss / np.float32(d) + eps))
        for j in range(d):
            out[j] = h[j] * inv * w[j]
    else:
        mean = _F0
        for j in range(d):
            mean += h[j]
        mean = mean / np.float32(d)
        var = _F0
        for j in range(d):
            c = h[j] - mean
            var += c * c
        inv = np.float32(1.0) / np.float32(math.sqrt(var / np.float32(d) + eps))
        for j in range(d):
            out[j] = (h[j] - mean) * inv * w[j] + b[j]


@njit(**_JIT)
def _matvec(x, w_t, bias, out):
    """``out = bias + x @ w_t`` with ``w_t`` ``(I, J)`` (the transposed weight), one axpy per input."""
    nj = out.size
    for j in range(nj):
        out[j] = _F0
    for i in range(x.size):
        xi = x[i]
        row = w_t[i]
        for j in range(nj):
            out[j] += xi * row[j]
    for j in range(nj):
        out[j] += bias[j]


@njit(**_JIT)
def _layer(li, x, dt, event, method, W, conv, ssm, ws):
    """One Mamba layer ``li`` on the normalised input ``x`` ``(D,)`` with token gap ``dt``; updates the
    layer's ``conv`` ``(K, E)`` and ``ssm`` ``(N, E)`` states in place and returns the output in ``ws.out``."""
    (in_wt, in_b, conv_w, conv_b, xp_wt, dtp_wt, dt_b, a_neg, d_skip, rate, out_wt, out_b) = W
    xz, xc, xdbl, dtb, dta, y, out = ws
    e = xc.size
    k_conv = conv.shape[0]
    n_state = ssm.shape[0]
    rank = dtp_wt.shape[1]

    _matvec(x, in_wt[li], in_b[li], xz)
    # Causal depthwise convolution over the K latest inputs (oldest first), then SiLU.
    for k in range(k_conv - 1):
        for d in range(e):
            conv[k, d] = conv[k + 1, d]
    for d in range(e):
        conv[k_conv - 1, d] = xz[d]
    cw = conv_w[li]
    for d in range(e):
        xc[d] = _F0
    for k in range(k_conv):
        for d in range(e):
            xc[d] += conv[k, d] * cw[k, d]
    cb = conv_b[li]
    for d in range(e):
        xc[d] = silu(xc[d] + cb[d], fexp)

    # x_proj -> (dt_low, B, C); dt_proj + bias -> softplus -> the input step.
    nx = xdbl.size
    for j in range(nx):
        xdbl[j] = _F0
    xw = xp_wt[li]
    for d in range(e):
        v = xc[d]
        for j in range(nx):
            xdbl[j] += v * xw[d, j]
    dw = dtp_wt[li]
    for d in range(e):
        dtb[d] = _F0
    for r in range(rank):
        v = xdbl[r]
        for d in range(e):
            dtb[d] += v * dw[r, d]
    bias = dt_b[li]
    for d in range(e):
        dtb[d] = softplus(dtb[d] + bias[d], fexp, flog1p)
    if event:
        rt = rate[li]
        for d in range(e):
            dta[d] = dt * rt[d]
    else:
        for d in range(e):
            dta[d] = dtb[d]

    # State update along the channels, one state index n at a time; y accumulates C . h.
    for d in range(e):
        y[d] = _F0
    an = a_neg[li]
    for n in range(n_state):
        bn = xdbl[rank + n]
        cn = xdbl[rank + n_state + n]
        arow = an[n]
        srow = ssm[n]
        # One loop per method, with the method a constant inside it, so that each loop vectorises.
        if method == 0:
            _update_row(srow, arow, dta, dtb, xc, bn, cn, y, 0)
        elif method == 1:
            _update_row(srow, arow, dta, dtb, xc, bn, cn, y, 1)
        elif method == 2:
            _update_row(srow, arow, dta, dtb, xc, bn, cn, y, 2)
        else:
            _update_row(srow, arow, dta, dtb, xc, bn, cn, y, 3)
    ds = d_skip[li]
    for d in range(e):
        y[d] = (y[d] + ds[d] * xc[d]) * silu(xz[e + d], fexp)
    _matvec(y, out_wt[li], out_b[li], out)


@njit(**_JIT)
def _embed(t, tok, counts, surf, E, h, hid):
    """The embedding of token ``t`` (id ``tok``) into ``h`` (:class:`~evmamba.model.embedding.TokenEmbedding`)."""
    (emb_kind, has_count, table, x_tab, y_tab, p_tab, grid_w, grid_p, count_w,
     s_w1t, s_b1, s_w2t, s_b2, pos_tab, pos_cell, pos_nx) = E
    d_model = h.size
    if emb_kind == 0:
        row = table[tok]
        for j in range(d_model):
            h[j] = row[j]
    elif emb_kind == 1:
        xy = tok // grid_p
        xr = x_tab[xy % grid_w]
        yr = y_tab[xy // grid_w]
        pr = p_tab[tok % grid_p]
        for j in range(d_model):
            h[j] = xr[j] + yr[j] + pr[j]
    else:
        # surface MLP (shared by every position) + coarse position row + polarity row
        srow = surf[t]
        if hid.size > 0 and s_w2t.shape[0] > 0:
            _matvec(srow, s_w1t, s_b1, hid)
            for i in range(hid.size):
                hid[i] = silu(hid[i], fexp)
            _matvec(hid, s_w2t, s_b2, h)
        else:
            _matvec(srow, s_w1t, s_b1, h)
        xy = tok // grid_p
        pos = ((xy // grid_w) // pos_cell) * pos_nx + (xy % grid_w) // pos_cell
        posr = pos_tab[pos]
        pr = p_tab[tok % grid_p]
        for j in range(d_model):
            h[j] = (h[j] + posr[j]) + pr[j]
    if has_count:
        lc = np.float32(math.log(max(np.float32(counts[t]), _F1)))
        for j in range(d_model):
            h[j] += lc * count_w[j]


@njit(**_JIT)
def _context(tok, dtv, h, X, CS, cws):
    """The context stage of token ``tok`` (gap ``dtv``) added to its embedding ``h`` ``(D,)`` in place
    (:meth:`~evmamba.model.context.ContextStage.step`).

    ``X`` = ``(in_wt (D, C), in_b (C,), out_wt (N C, D), out_b (D,), dx, dy, dp (N,) int64, grid_w, grid_h,
    grid_p, tau float64, act)``: neighbour ``n`` is the cell ``(x + dx[n], y + dy[n])`` with polarity ``dp[n]``,
    ``act`` 1 for SiLU after the input projection. ``CS`` = the stream's map ``(h_map (V, C) float32, t_map
    (V,) float64, seen (V,) uint8, now (1,) float64)``; ``cws`` = scratch ``(hc (C,), acc (D,))``.

    The token's own ``h`` is written to the map before the gather (``j = i`` is one of its neighbours). Cells
    outside the grid, never seen in this stream, or whose decay underflows to 0 contribute exactly 0 and are
    skipped; the rest add ``C`` rows of ``out_wt``, each a contiguous axpy over ``D``.
    """
    (in_wt, in_b, out_wt, out_b, dx, dy, dp, grid_w, grid_h, grid_p, tau, act) = X
    h_map, t_map, seen, now_arr = CS
    hc, acc = cws
    n_ch = hc.size
    d_model = h.size
    _matvec(h, in_wt, in_b, hc)
    if act == 1:
        for c in range(n_ch):
            hc[c] = silu(hc[c], fexp)
    now = now_arr[0] + np.float64(dtv)
    now_arr[0] = now
    own = h_map[tok]
    for c in range(n_ch):
        own[c] = hc[c]
    t_map[tok] = now
    seen[tok] = 1
    xy = tok // grid_p
    x = xy % grid_w
    y = xy // grid_w
    for j in range(d_model):
        acc[j] = out_b[j]
    for n in range(dx.size):
        nx = x + dx[n]
        ny = y + dy[n]
        if nx < 0 or nx >= grid_w or ny < 0 or ny >= grid_h:
            continue
        cell = (ny * grid_w + nx) * grid_p + dp[n]
        if seen[cell] == 0:
            continue
        # The decay in float64 (times are float64), then float32 like the PyTorch step's cast.
        decay = np.float32(math.exp((t_map[cell] - now) / tau))
        if decay == _F0:
            continue
        hrow = h_map[cell]
        base = n * n_ch
        # Four rows of out_wt per pass over acc: a quarter of the loads and stores of acc, same vector loop.
        c = 0
        while c + 4 <= n_ch:
            v0 = hrow[c] * decay
            v1 = hrow[c + 1] * decay
            v2 = hrow[c + 2] * decay
            v3 = hrow[c + 3] * decay
            r0 = out_wt[base + c]
            r1 = out_wt[base + c + 1]
            r2 = out_wt[base + c + 2]
            r3 = out_wt[base + c + 3]
            for j in range(d_model):
                acc[j] += (v0 * r0[j] + v1 * r1[j]) + (v2 * r2[j] + v3 * r3[j])
            c += 4
        while c < n_ch:
            v = hrow[c] * decay
            row = out_wt[base + c]
            for j in range(d_model):
                acc[j] += v * row[j]
            c += 1
    for j in range(d_model):
        h[j] += acc[j]


@njit(**_JIT)
def run_tokens(tokens, counts, dts, surf, need, E, W, H, S, ws, lws, out_logits, out_index, X, CS, cws):
    """Advance one stream by ``T = tokens.size`` tokens; return how many logit rows were written.

    ``tokens`` (T,) int ids, ``counts`` (T,) int events per token, ``dts`` (T,) float32 gaps, ``surf``
    (T, F) float32 local surfaces (a "surface" embedding; (T, 0) otherwise), ``need`` (T,) uint8: 1 where the
    logits after that token are wanted. Rows ``out_logits[m]`` (C,) and ``out_index[m]`` (token position) are
    written for the wanted tokens, in order.

    ``E`` = (embedding tables and codes, see :func:`_embed`), ``W`` = per-layer weight stacks (see
    :func:`_layer`), ``H`` = norms, pooling and head, ``S`` = the stream's state, ``ws``/``lws`` = scratch;
    ``X``, ``CS``, ``cws`` = the context stage's weights, the stream's neighbour map and scratch (see
    :func:`_context`; ``X[0]`` of size 0: the model has no context stage).

    A token whose logits are not wanted and whose pooled window is still open only runs the first stage:
    its later stages would work on a scratch copy of the state that is thrown away (see
    :class:`~evmamba.model.classifier.EventClassifier`), so skipping them changes nothing that persists.
    """
    (norm_kind, norm_eps, norm_w, norm_b, fnorm_w, fnorm_b, head_wt, head_b,
     stage_start, strides, readout_kind, dt_eps, event, method) = H
    (conv, ssm, conv_scratch, ssm_scratch, carry_sum, carry_dt, carry_n, ro_sum, ro_w, ro_last) = S
    h, xn, feats, hid = ws
    n_stages = stage_start.size - 1
    d_model = h.size
    has_context = X[0].size > 0
    m = 0
    for t in range(tokens.size):
        tok = np.int64(tokens[t])
        dtv = dts[t]
        _embed(t, tok, counts, surf, E, h, hid)
        if has_context:
            _context(tok, dtv, h, X, CS, cws)

        commit = -1  # -1: this stage's input is final; 1: a window just completed; 0: a window is open
        skipped = False
        for k in range(n_stages):
            for li in range(stage_start[k], stage_start[k + 1]):
                _norm(h, norm_w[li], norm_b[li], norm_kind, norm_eps, xn)
                if commit == 0:
                    # Run from the state of the last complete window; the result is thrown away.
                    conv_scratch[li, :, :] = conv[li]
                    ssm_scratch[li, :, :] = ssm[li]
                    _layer(li, xn, dtv, event, method, W, conv_scratch[li], ssm_scratch[li], lws)
                else:
                    _layer(li, xn, dtv, event, method, W, conv[li], ssm[li], lws)
                out = lws[6]
                for j in range(d_model):
                    h[j] += out[j]
            if k == n_stages - 1:
                break
            # Pooling after stage k: fold this token's output into the open window.
            total_n = carry_n[k] + _F1
            dt_sum = carry_dt[k] + dtv
            final = commit != 0
            complete = final and total_n == np.float32(strides[k])
            for j in range(d_model):
                tot = carry_sum[k, j] + h[j]
                h[j] = tot / total_n
                if complete:
                    carry_sum[k, j] = _F0
                elif final:
                    carry_sum[k, j] = tot
            if complete:
                carry_n[k] = _F0
                carry_dt[k] = _F0
            elif final:
                carry_n[k] = total_n
                carry_dt[k] = dt_sum
            dtv = dt_sum
            commit = 1 if complete else 0
            if commit == 0 and need[t] == 0:
                skipped = True
                break
        if skipped:
            continue
        _norm(h, fnorm_w, fnorm_b, norm_kind, norm_eps, xn)  # y = final_norm(h)
        present = commit != 0
        if readout_kind == 1:  # last
            for j in range(d_model):
                feats[j] = xn[j]
                if present:
                    ro_last[j] = xn[j]
        else:
            w = _F1 if readout_kind == 0 else dtv + np.float32(dt_eps)
            denom = max(ro_w[0] + w, np.float32(1e-30))
            for j in range(d_model):
                feats[j] = (ro_sum[j] + w * xn[j]) / denom
            if present:
                for j in range(d_model):
                    ro_sum[j] += w * xn[j]
                ro_w[0] += w
        if need[t]:
            _matvec(feats, head_wt, head_b, out_logits[m])
            out_index[m] = t
            m += 1
    return m
