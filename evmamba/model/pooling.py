"""Event pooling between stages and the classifier readouts, for whole sequences and for running streams.

**Pooling** with stride ``s``: window ``j`` covers tokens ``[j*s, (j+1)*s)`` of a stage's output; the pooled
token is the mean of the window's valid tokens and its Δt is the sum of their Δt, so pooled Δt still adds
up to the stream's duration. A sequence of ``n`` valid tokens gives ``ceil(n / s)`` pooled tokens; the last
window may be partial.

**Readouts** turn the last stage's ``(B, L, d)`` outputs into one ``(B, d)`` vector per sequence, honouring
``lengths``: ``"mean"`` (masked mean), ``"last"`` (output at the last valid position) and ``"dt_mean"``
(mean weighted by ``Δt + dt_eps``: a token stands for the time since the previous one; ``dt_eps`` keeps
zero-gap tokens, such as the first, in the average).

The running forms (``*_carry`` / ``readout_*`` with a state) serve the classifier's streaming paths: a
stage's output arrives a chunk at a time, and what belongs to a window that is still open is *carried* --
its sum, Δt sum and token count -- until the window completes. A carry is a dict ``{"sum": (B, d), "dt":
(B,), "n": (B,)}`` (float). :func:`pool_with_carry` folds a chunk of final tokens into it; the rest --
one token more, final or not -- is :func:`add_to_window`, :func:`window_mean` and :func:`carry_token`,
shared by :meth:`~evmamba.model.classifier.EventClassifier.step` and ``forward_chunk``.
"""

from __future__ import annotations

import torch

READOUTS = ("mean", "last", "dt_mean")


def valid_mask(lengths: torch.Tensor | None, batch: int, seqlen: int, device, dtype=torch.float32) -> torch.Tensor:
    """``(B, L)`` 1 at valid positions and 0 in the right padding (all ones when ``lengths`` is None)."""
    if lengths is None:
        return torch.ones(batch, seqlen, device=device, dtype=dtype)
    return (torch.arange(seqlen, device=device)[None, :] < lengths[:, None]).to(dtype)


# ---------------------------------------------------------------------------------------------- pooling
def pool_windows(h: torch.Tensor, dt: torch.Tensor, lengths: torch.Tensor | None, stride: int):
    """Mean-pool ``h`` ``(B, L, d)`` over windows of ``stride`` tokens; sum ``dt`` ``(B, L)`` over them.

    Returns ``(h' (B, ceil(L/s), d), dt' (B, ceil(L/s)), lengths' (B,) or None)`` with
    ``lengths' = ceil(lengths / s)``; padded windows are zero.
    """
    batch, seqlen, d = h.shape
    n_win = -(-seqlen // stride)
    pad = n_win * stride - seqlen
    mask = valid_mask(lengths, batch, seqlen, h.device, h.dtype)
    hm = torch.nn.functional.pad(h * mask[..., None], (0, 0, 0, pad)).view(batch, n_win, stride, d).sum(2)
    cnt = torch.nn.functional.pad(mask, (0, pad)).view(batch, n_win, stride).sum(2)
    dtw = torch.nn.functional.pad(dt * mask.to(dt.dtype), (0, pad)).view(batch, n_win, stride).sum(2)
    new_lengths = None if lengths is None else torch.div(lengths + stride - 1, stride, rounding_mode="floor")
    return hm / cnt.clamp_min(1.0)[..., None], dtw, new_lengths


def pool_with_carry(h, dt, lengths, carry_sum, carry_dt, carry_n, stride: int):
    """Pool a chunk of a running stream whose open window already holds ``carry_n`` tokens.

    ``h`` ``(B, T, d)``, ``dt`` ``(B, T)``, ``lengths`` ``(B,)``: the chunk's new tokens (right-padded);
    ``carry_sum`` ``(B, d)``, ``carry_dt`` ``(B,)``, ``carry_n`` ``(B,)`` float: the open window so far.

    Returns ``(hc (B, Tc, d), dtc (B, Tc), nc (B,), (sum', dt', n'))``: the windows that the chunk completes
    (each exactly ``stride`` tokens: mean and Δt sum), how many there are per row, and the new open window.
    """
    batch, seqlen, d = h.shape
    carried = carry_n.to(torch.long)
    j = torch.arange(seqlen, device=h.device)[None, :]
    window = torch.div(carried[:, None] + j, stride, rounding_mode="floor")  # 0: the window the carry is in
    n_slots = (stride - 1 + seqlen) // stride + 1
    window = torch.where(j < lengths[:, None], window, n_slots)  # padding goes to a spare slot
    sums = h.new_zeros(batch, n_slots + 1, d).scatter_add_(1, window[..., None].expand(-1, -1, d), h)
    dts = dt.new_zeros(batch, n_slots + 1).scatter_add_(1, window, dt)
    sums[:, 0] += carry_sum
    dts[:, 0] += carry_dt
    total = carried + lengths
    n_complete = torch.div(total, stride, rounding_mode="floor")
    n_max = int(n_complete.max()) if batch else 0
    hc = sums[:, :n_max] / stride
    dtc = dts[:, :n_max]
    open_sum = sums.gather(1, n_complete[:, None, None].expand(-1, 1, d))[:, 0]
    open_dt = dts.gather(1, n_complete[:, None])[:, 0]
    open_n = (total - n_complete * stride).to(carry_n.dtype)
    return hc, dtc, n_complete, (open_sum, open_dt, open_n)


def add_to_window(window: dict, x: torch.Tensor, dt: torch.Tensor, weight: torch.Tensor):
    """The open window ``window`` (a carry) with one more token ``x`` (B, d), ``dt`` (B,), counted where
    ``weight`` (B,) is 1 and not where it is 0: ``(sum (B, d), Δt sum (B,), count (B,))``; ``window`` is unchanged."""
    return window["sum"] + weight[:, None] * x, window["dt"] + weight * dt, window["n"] + weight


def window_mean(total: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """The pooled token of a window: its sum (B, d) over its count (B,) (0 for an empty window)."""
    return total / n.clamp_min(1.0)[:, None]


def carry_token(carry: dict, x: torch.Tensor, dt: torch.Tensor, final: torch.Tensor, stride: int):
    """One token of every stream through a running pooling of ``stride``, without host synchronisation (so a
    CUDA graph can capture it): ``x`` (B, d), ``dt`` (B,), ``final`` (B,) bool.

    Returns ``(pooled (B, d), Δt (B,), complete (B,) bool)``: the window the token falls in, as it stands with
    the token (its mean and Δt sum), and whether the token completed it. Where the token is ``final`` it joins
    the carry (a window that completes leaves it empty); where it is not (it may still change), the carry is
    left as it was, and the window is evaluated on a copy.
    """
    total, dt_sum, n = add_to_window(carry, x, dt, torch.ones_like(carry["n"]))
    complete = final & (n == stride)
    keep = final & ~complete  # the window grows by a final token but stays open
    carry["sum"].copy_(torch.where(keep[:, None], total, torch.where(complete[:, None], 0.0, carry["sum"])))
    carry["n"].copy_(torch.where(keep, n, torch.where(complete, 0.0, carry["n"])))
    carry["dt"].copy_(torch.where(keep, dt_sum, torch.where(complete, 0.0, carry["dt"])))
    return window_mean(total, n), dt_sum, complete


# ---------------------------------------------------------------------------------------------- readouts
def token_weights(kind: str, dt: torch.Tensor, dt_eps: float) -> torch.Tensor:
    """Weight of each token in the readout average: 1 (``mean``) or ``Δt + dt_eps`` (``dt_mean``)."""
    if kind == "dt_mean":
        return dt + dt_eps
    return torch.ones_like(dt)


def readout(h: torch.Tensor, dt: torch.Tensor, lengths: torch.Tensor | None, kind: str, dt_eps: float) -> torch.Tensor:
    """``(B, L, d)`` outputs -> ``(B, d)`` per sequence (see the module docstring). Empty sequences give 0."""
    batch, seqlen, _ = h.shape
    if kind == "last":
        if seqlen == 0:  # no outputs at all: the empty readout
            return h.new_zeros((batch, h.shape[-1]))
        if lengths is None:
            return h[:, -1]
        idx = (lengths - 1).clamp_min(0)
        last = h.gather(1, idx[:, None, None].expand(-1, 1, h.shape[-1]))[:, 0]
        return last * (lengths > 0).to(h.dtype)[:, None]
    w = token_weights(kind, dt.to(h.dtype), dt_eps) * valid_mask(lengths, batch, seqlen, h.device, h.dtype)
    return (h * w[..., None]).sum(1) / w.sum(1).clamp_min(1e-30)[:, None]


def readout_accumulate(state: dict, h, dt, lengths, kind: str, dt_eps: float) -> None:
    """Add a chunk of committed outputs ``h`` ``(B, T, d)`` (``lengths`` valid per row) to a running readout
    ``state`` (``sum`` (B, d), ``weight`` (B,), ``last`` (B, d)), in place."""
    batch, seqlen, d = h.shape
    if seqlen == 0:
        return
    if kind == "last":
        idx = (lengths - 1).clamp_min(0)
        last = h.gather(1, idx[:, None, None].expand(-1, 1, d))[:, 0]
        state["last"].copy_(torch.where((lengths > 0)[:, None], last, state["last"]))
        return
    w = token_weights(kind, dt.to(h.dtype), dt_eps) * valid_mask(lengths, batch, seqlen, h.device, h.dtype)
    state["sum"].add_((h * w[..., None]).sum(1))
    state["weight"].add_(w.sum(1))


def readout_value(state: dict, y, dt, present, kind: str, dt_eps: float) -> torch.Tensor:
    """The readout of a running stream: its committed outputs (``state``) plus, where ``present`` (B,) is
    true, one more output ``y`` (B, d) with time step ``dt`` (B,) that is not yet final."""
    if kind == "last":
        return torch.where(present[:, None], y, state["last"])
    w = token_weights(kind, dt.to(y.dtype), dt_eps) * present.to(y.dtype)
    return (state["sum"] + w[:, None] * y) / (state["weight"] + w).clamp_min(1e-30)[:, None]


def readout_commit(state: dict, y, dt, commit, kind: str, dt_eps: float) -> None:
    """Add output ``y`` (B, d) to the running readout where ``commit`` (B,) is true, in place (no branching
    on tensor values, so it can run inside a captured CUDA graph)."""
    if kind == "last":
        state["last"].copy_(torch.where(commit[:, None], y, state["last"]))
        return
    w = token_weights(kind, dt.to(y.dtype), dt_eps) * commit.to(y.dtype)
    state["sum"].add_(w[:, None] * y)
    state["weight"].add_(w)
