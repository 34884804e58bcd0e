"""Triton kernels of the chunked selective scan: forward, backward and the segment carries between them.

**Tiles.** One program handles one batch row ``b``, ``BLOCK_D`` channels and one *segment* of the sequence,
which it walks in chunks of ``T`` steps with the float32 state carried from chunk to chunk, so any length
works. Inside a chunk every quantity lives in a 4-D register tile ``(N2, T, BLOCK_D, N1)`` with
``N = N2 * N1`` (padded to a power of two): Triton's default layout for that shape puts ``BLOCK_D x N1`` on
the threads and keeps ``N2 x T`` in each thread's registers, so the scan over time runs serially inside a
thread (no shuffles) and the sum over states ``C . h`` is mostly in-thread (``N2``). Chunk inputs are loaded
as 2-D/3-D tiles (coalesced along whichever axis is contiguous in memory) and broadcast into the 4-D tile.
The forward loads two chunks ahead of the one it computes, so that memory latency overlaps the arithmetic
(one chunk ahead left every chunk waiting ~0.8 us for its loads on an H200).

**Segments.** A batch row has only ``D / BLOCK_D`` programs; at ``B = 16, D = 256`` that is one 4-warp program
per multiprocessor, too little to hide latency. So the sequence is also cut into segments that run in
parallel. The recurrence is linear, so a segment only needs one number per state from its neighbours:

* forward: a *carry* pass computes, per segment, the state it ends in when started from zero (``E``) and the
  product of its decays (``P``); the segment ``s`` then starts from ``h0 -> P[0] h0 + E[0] -> ...`` over the
  segments before it (a few fused multiply-adds per state, done at the start of the main pass);
* backward: the adjoint runs from the end, so the carry pass computes, per segment, the message it sends to
  the segment before it when nothing enters from behind (``W``); with the same ``P``, the message entering
  segment ``s`` is ``dh_T -> W[S-1] + P[S-1] (.) -> ...`` over the segments after it.

**Forward** (``scan_fwd_kernel``): ``dtB = softplus(delta + bias)``, event-mode ``dtA = timesteps *
softplus(rate)`` (computed here from the ``(B, L)`` time steps and the ``(D,)`` rate), the discretization,
the scan, ``C . h``, the ``D`` skip, the SiLU gate, ``lengths`` (padding holds the state and outputs zero),
initial and final state. With ``SAVE_STATES`` it writes the state at the start of every chunk,
``(B, n_chunks, D, N)``: the backward recomputes each chunk from there instead of storing ``(B, D, L, N)``.

**Backward** (``scan_bwd_kernel``): chunks in reverse order. Each recomputes its states, runs the adjoint
``g[t] = dh[t] + Abar[t+1] g[t+1]`` backwards and turns it into gradients for ``u``, ``delta``
(pre-softplus), ``z``, ``A``, ``B``, ``C``, ``D``, the ``delta`` bias, the event rate, the time steps and the
initial state. Sums over channels are added into one buffer with atomic adds (``B``, ``C``; unless
``ATOMIC_SUMS`` is off) or written per channel block and added up by the caller (time steps); sums over time
(``A``, ``D``, biases) are kept in registers and written once per program.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_primitives import (
    input_factor,
    linear_scan,
    linear_scan_full,
    shift_scan,
    sigmoid,
    silu_parts,
    softplus,
    take_time,
    transition,
    transition_grad,
)


# ------------------------------------------------------------------------------------------ loads
@triton.jit
def _load_td(ptr, s_l, s_d, it, idd, mt, md):
    """``(T, BLOCK_D)`` tile of a ``(.., D, L)`` tensor (``ptr`` at the chunk's first step), as float32."""
    x = tl.load(ptr + it[:, None] * s_l + idd[None, :] * s_d, mask=mt[:, None] & md[None, :], other=0.0)
    return x.to(tl.float32)


@triton.jit
def _load_ntn(ptr, s_l, s_n, it, n3, mt, mn3):
    """``(N2, T, N1)`` tile of a ``(.., N, L)`` tensor (``ptr`` at the chunk's first step), as float32."""
    x = tl.load(ptr + n3 * s_n + it[None, :, None] * s_l, mask=mt[None, :, None] & mn3, other=0.0)
    return x.to(tl.float32)


@triton.jit
def _load_td_opt(ptr, s_l, s_d, it, idd, mt, md, HAS: tl.constexpr):
    """Like :func:`_load_td`; zeros (never read) when the tensor is absent."""
    if HAS:
        return _load_td(ptr, s_l, s_d, it, idd, mt, md)
    else:
        return tl.zeros([it.shape[0], idd.shape[0]], tl.float32)


@triton.jit
def _load_ntn_opt(ptr, s_l, s_n, it, n3, mt, mn3, HAS: tl.constexpr):
    if HAS:
        return _load_ntn(ptr, s_l, s_n, it, n3, mt, mn3)
    else:
        return tl.zeros([n3.shape[0], it.shape[0], n3.shape[2]], tl.float32)


@triton.jit
def _take(x, FAST: tl.constexpr):
    """A prefetched float32 tile at the point of use, passed through a register move that the compiler may not
    move or see through. Without it, the compiler put the change of layout that the use needs (through shared
    memory) right after the load, where it waited out the memory latency in every chunk: 13 % of the
    backward's stall samples on an H200, at the chunk's saved state."""
    if FAST:
        return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=False, pack=1)
    else:
        return x


# ------------------------------------------------------------------------- sums over channel lanes
def _lane_sums_asm(atomic: bool) -> str:
    """PTX for :func:`_lane_sums_store`: operands ``$0..$31`` the thread's 32 values (outputs tied to the
    inputs ``$32..$63``, so the rounds work in place), ``$64..$95`` copies of the lane's destination address."""
    lines = ["{", ".reg .pred q<3>;", ".reg .b32 lane, bit, s;", "mov.u32 lane, %laneid;"]
    for k, mask in enumerate((4, 8, 16)):
        lines += [f"and.b32 bit, lane, {mask};", f"setp.ne.u32 q{k}, bit, 0;"]
    # Halving rounds: the lanes that differ in `mask` (channel bit 2, 1, 0) trade halves of what they hold;
    # a lane with the bit set keeps the upper half. The kept half ends in slots 0 .. half - 1.
    for half, mask, q in ((16, 16, "q2"), (8, 8, "q1"), (4, 4, "q0")):
        for i in range(half):
            lo, hi = f"${i}", f"${i + half}"
            lines += [f"selp.b32 s, {lo}, {hi}, {q};", f"selp.b32 {lo}, {hi}, {lo}, {q};",
                      f"shfl.sync.bfly.b32 s, s, {mask}, 31, -1;", f"add.f32 {lo}, {lo}, s;"]
    op = "red.global.gpu.relaxed.add.v4.f32" if atomic else "st.global.v4.f32"
    lines += [f"{op} [$64], {{$0, $1, $2, $3}};", "}"]
    return "\n".join(lines)


_LANE_SUMS_ADD = tl.constexpr(_lane_sums_asm(True))
_LANE_SUMS_STORE = tl.constexpr(_lane_sums_asm(False))
_LANE_SUMS_CONSTRAINTS = tl.constexpr(",".join(["=r"] * 32 + [str(i) for i in range(32)] + ["l"] * 32))


@triton.jit
def _lane_sums_store(x, ptr, ATOMIC: tl.constexpr):
    """Sum of ``x`` ``(N2, T, BLOCK_D, N1) = (4, 8, 8, 4)`` over its channel axis, added into (``ATOMIC``) or
    stored at a ``(N2, T, N1)`` row-major block with rows ``L_part`` apart, written as a reduce-scatter.

    ``tl.sum`` over the channel lanes gives every lane all 32 sums (3 butterfly rounds of 32 shuffles), and
    the store then changes layout through shared memory. Here the 8 lanes of a state trade halves instead
    (16 + 8 + 4 shuffles) and each ends with 4 of the sums -- 4 consecutive steps of one state -- written with
    one vector instruction. It relies on the backward's one-warp layout of this tile (Triton's blocked layout:
    lane = channel * 4 + state lane, a thread's 32 values in order ``n2 * T + t``), so the launcher enables it
    only for that tile; the lane with channel bits ``(c2 c1 c0)`` holds ``n2 = 2 c2 + c1`` and steps
    ``4 c0 .. 4 c0 + 3``: ``ptr`` ``(1, 1, BLOCK_D, N1)`` must point there (see the caller)."""
    ptr4 = tl.broadcast_to(ptr.to(tl.int64), x.shape)
    if ATOMIC:
        tl.inline_asm_elementwise(_LANE_SUMS_ADD, _LANE_SUMS_CONSTRAINTS, [x, ptr4], dtype=tl.float32,
                                  is_pure=False, pack=32)
    else:
        tl.inline_asm_elementwise(_LANE_SUMS_STORE, _LANE_SUMS_CONSTRAINTS, [x, ptr4], dtype=tl.float32,
                                  is_pure=False, pack=32)


# ------------------------------------------------------------------------------- shared arithmetic
@triton.jit
def _sum_states(x):
    """Sum of a ``(N2, T, BLOCK_D, N1)`` tile over the states: ``(T, BLOCK_D)``. The in-register axis ``N2``
    goes first, so that the shuffles of the across-thread axis ``N1`` act on 4x fewer values."""
    return tl.sum(tl.sum(x, axis=0), axis=2)


@triton.jit
def _first_step_mask(it):
    return (it == 0)[None, :, None, None]


@triton.jit
def _steps(dt_raw, bias, ts, sp_rate, valid, SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr,
           EVENT: tl.constexpr, NEEDS_DELTA: tl.constexpr, FAST: tl.constexpr):
    """``(dtB, dtA, dtB pre-activation)`` on a ``(T, BLOCK_D)`` tile; ``dtA`` is zero on padding. ``ts``: the time
    steps as a ``(T, BLOCK_D)`` tile (equal across channels)."""
    pre = dt_raw
    if HAS_BIAS:
        pre = pre + bias[None, :]
    if NEEDS_DELTA:
        if SOFTPLUS:
            dtB = softplus(pre, FAST)
        else:
            dtB = pre
    else:
        dtB = pre
    if EVENT:
        dtA = (ts * valid[:, None]) * sp_rate[None, :]
    else:
        dtA = dtB * valid[:, None]
    return dtB, dtA, pre


@triton.jit
def _input_term(dtB, v, Bm, A, A_inv, METHOD: tl.constexpr, FAST: tl.constexpr):
    """``(Bbar u, Bbar / B)`` on the 4-D tile, from ``dtB`` and ``v = u * valid`` ``(T, BLOCK_D)`` and
    ``Bm`` ``(N2, T, N1)``. For ``mamba`` and ``dirac`` the factor keeps the ``(1, T, BLOCK_D, 1)`` shape."""
    B4 = Bm[:, :, None, :]
    if METHOD == 0:
        f = dtB[None, :, :, None]
        bx = (dtB * v)[None, :, :, None] * B4
    elif METHOD == 3:
        f = tl.full([1, dtB.shape[0], dtB.shape[1], 1], 1.0, tl.float32)
        bx = v[None, :, :, None] * B4
    else:
        f = input_factor(dtB[None, :, :, None], A, A_inv, METHOD, FAST)
        bx = f * (v[None, :, :, None] * B4)
    return bx, f


@triton.jit
def _load_dn3(ptr, idd, n3, m_dn, N):
    """``(N2, BLOCK_D, N1)`` slice of a contiguous ``(.., D, N)`` float32 tensor (``ptr`` at its start)."""
    return tl.load(ptr + idd[None, :, None] * N + n3, mask=m_dn, other=0.0)


@triton.jit
def _load_dn(ptr, idd, n3, m_dn, N):
    """``(N2, 1, BLOCK_D, N1)`` slice of a contiguous ``(.., D, N)`` float32 tensor (``ptr`` at its start);
    ``n3`` the ``(N2, 1, N1)`` offsets of the states within a channel's row of ``N``."""
    return _load_dn3(ptr, idd, n3, m_dn, N)[:, None, :, :]


@triton.jit
def _store_dn(ptr, x, idd, n3, m_dn, N):
    tl.store(ptr + idd[None, :, None] * N + n3, tl.sum(x, axis=1), mask=m_dn)


@triton.jit
def _store_sum(ptr, x, mask, ATOMIC: tl.constexpr):
    """A channel block's share of a sum over channels: added in place (``ATOMIC``) or stored in its own slice."""
    if ATOMIC:
        tl.atomic_add(ptr, x, mask=mask, sem="relaxed")
    else:
        tl.store(ptr, x, mask=mask)


# ---------------------------------------------------------------------------------------- forward
@triton.jit
def scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ts_ptr, rate_ptr, h0_ptr, len_ptr,
    y_ptr, hT_ptr, states_ptr, seg_E_ptr, seg_P_ptr,
    L, DIM, N, n_chunks, chunks_per_seg, n_segs, carry_split,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_z_b, s_z_d, s_z_l,
    s_B_b, s_B_n, s_B_l,
    s_C_b, s_C_n, s_C_l,
    s_ts_b, s_ts_l,
    s_y_b, s_y_d, s_y_l,
    s_A_d, s_A_n,
    s_h0_b, s_h0_d, s_h0_n,
    T: tl.constexpr, BLOCK_D: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr,
    METHOD: tl.constexpr, EVENT: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_LEN: tl.constexpr, SAVE_STATES: tl.constexpr, WRITE_FINAL: tl.constexpr,
    CARRY_ONLY: tl.constexpr, NATIVE: tl.constexpr, FAST: tl.constexpr,
):
    """Main pass, or with ``CARRY_ONLY`` the segment carry pass: zero start, no output, writes ``(E, P)``
    ``(B, n_segs, D, N)`` per segment. The main pass starts segment ``s`` from the carries of the
    ``s * carry_split`` pieces before it (the carry pass may cut each segment into ``carry_split`` pieces, run
    as segments of their own, to fill the GPU)."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2)
    zero64 = b * 0
    NEEDS_DELTA: tl.constexpr = not (EVENT and METHOD == 3)

    it = tl.arange(0, T)
    idd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = idd < DIM
    n3 = tl.arange(0, N2)[:, None, None] * N1 + tl.arange(0, N1)[None, None, :]  # (N2, 1, N1)
    mn3 = n3 < N
    m_dn = md[None, :, None] & mn3  # (N2, BLOCK_D, N1)

    # Per-channel constants. Padded channels/states get A = -1 (finite factors) and B = C = 0 (no effect).
    A3 = tl.load(A_ptr + idd[None, :, None] * s_A_d + n3 * s_A_n, mask=m_dn, other=-1.0).to(tl.float32)
    A = A3[:, None, :, :]
    A_log2e = A * 1.4426950408889634
    A_inv = 1.0 / A
    if HAS_D:
        Dv = tl.load(D_ptr + idd, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + idd, mask=md, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], tl.float32)
    if EVENT:
        sp_rate = softplus(tl.load(rate_ptr + idd, mask=md, other=0.0).to(tl.float32), FAST)
    else:
        sp_rate = tl.zeros([BLOCK_D], tl.float32)
    if HAS_LEN:
        length = tl.load(len_ptr + b).to(tl.int32)
        length = tl.minimum(tl.maximum(length, 0), L)
    else:
        length = L

    seg_base = (b * n_segs * carry_split) * DIM * N
    if CARRY_ONLY:
        h = tl.zeros([N2, 1, BLOCK_D, N1], tl.float32)
        P = tl.full([N2, 1, BLOCK_D, N1], 1.0, tl.float32)
    else:
        if HAS_H0:
            h3 = tl.load(h0_ptr + b * s_h0_b + idd[None, :, None] * s_h0_d + n3 * s_h0_n, mask=m_dn, other=0.0)
            h = h3.to(tl.float32)[:, None, :, :]
        else:
            h = tl.zeros([N2, 1, BLOCK_D, N1], tl.float32)
        # Start of this segment: run the carries of the segments before it.
        for j in range(0, seg * carry_split):
            off = seg_base + (j + zero64) * DIM * N
            h = _load_dn(seg_P_ptr + off, idd, n3, m_dn, N) * h + _load_dn(seg_E_ptr + off, idd, n3, m_dn, N)

    c_begin = seg * chunks_per_seg
    c_end = tl.minimum(c_begin + chunks_per_seg, n_chunks)

    u_b = u_ptr + b * s_u_b
    dt_b = delta_ptr + b * s_dt_b
    z_b = z_ptr + b * s_z_b
    B_b = B_ptr + b * s_B_b
    C_b = C_ptr + b * s_C_b
    ts_b = ts_ptr + b * s_ts_b
    y_b = y_ptr + b * s_y_b
    st_b = states_ptr + (b * n_chunks) * DIM * N
    LOAD_Z: tl.constexpr = HAS_Z and not CARRY_ONLY
    LOAD_C: tl.constexpr = not CARRY_ONLY

    # Two chunks in flight ahead of the one computed.
    t1 = (c_begin + zero64) * T
    m1 = (t1 + it < L) & (c_begin < c_end)
    u1 = _load_td(u_b + t1 * s_u_l, s_u_l, s_u_d, it, idd, m1, md)
    d1 = _load_td_opt(dt_b + t1 * s_dt_l, s_dt_l, s_dt_d, it, idd, m1, md, NEEDS_DELTA)
    z1 = _load_td_opt(z_b + t1 * s_z_l, s_z_l, s_z_d, it, idd, m1, md, LOAD_Z)
    B1 = _load_ntn(B_b + t1 * s_B_l, s_B_l, s_B_n, it, n3, m1, mn3)
    C1 = _load_ntn_opt(C_b + t1 * s_C_l, s_C_l, s_C_n, it, n3, m1, mn3, LOAD_C)
    # The time steps are one value per step, but loaded as a (T, BLOCK_D) tile with stride 0 across channels:
    # in delta's layout the decay step needs no change of layout (a (T,) vector cost ~17 more instructions a chunk).
    ts1 = _load_td_opt(ts_b + t1 * s_ts_l, s_ts_l, 0, it, idd, m1, md, EVENT)
    t2 = t1 + T
    m2 = (t2 + it < L) & (c_begin + 1 < c_end)
    u2 = _load_td(u_b + t2 * s_u_l, s_u_l, s_u_d, it, idd, m2, md)
    d2 = _load_td_opt(dt_b + t2 * s_dt_l, s_dt_l, s_dt_d, it, idd, m2, md, NEEDS_DELTA)
    z2 = _load_td_opt(z_b + t2 * s_z_l, s_z_l, s_z_d, it, idd, m2, md, LOAD_Z)
    B2 = _load_ntn(B_b + t2 * s_B_l, s_B_l, s_B_n, it, n3, m2, mn3)
    C2 = _load_ntn_opt(C_b + t2 * s_C_l, s_C_l, s_C_n, it, n3, m2, mn3, LOAD_C)
    ts2 = _load_td_opt(ts_b + t2 * s_ts_l, s_ts_l, 0, it, idd, m2, md, EVENT)
    for c in range(c_begin, c_end):
        t0 = (c + zero64) * T
        t3 = t0 + 2 * T
        m3 = (t3 + it < L) & (c + 2 < c_end)
        u3 = _load_td(u_b + t3 * s_u_l, s_u_l, s_u_d, it, idd, m3, md)
        d3 = _load_td_opt(dt_b + t3 * s_dt_l, s_dt_l, s_dt_d, it, idd, m3, md, NEEDS_DELTA)
        z3 = _load_td_opt(z_b + t3 * s_z_l, s_z_l, s_z_d, it, idd, m3, md, LOAD_Z)
        B3 = _load_ntn(B_b + t3 * s_B_l, s_B_l, s_B_n, it, n3, m3, mn3)
        C3 = _load_ntn_opt(C_b + t3 * s_C_l, s_C_l, s_C_n, it, n3, m3, mn3, LOAD_C)
        ts3 = _load_td_opt(ts_b + t3 * s_ts_l, s_ts_l, 0, it, idd, m3, md, EVENT)

        if SAVE_STATES:
            _store_dn(st_b + (c + zero64) * DIM * N, h, idd, n3, m_dn, N)

        tt = t0 + it
        valid = (tt < length).to(tl.float32)  # (T,)
        dtB, dtA, _ = _steps(d1, bias, ts1, sp_rate, valid, SOFTPLUS, HAS_BIAS, EVENT, NEEDS_DELTA, FAST)
        abar = transition(dtA[None, :, :, None], A, A_log2e, METHOD, FAST)  # (N2, T, BD, N1)
        bx, _ = _input_term(dtB, u1 * valid[:, None], B1, A, A_inv, METHOD, FAST)
        # Fold the carried state into the first step, so one scan gives the true states directly.
        bx = tl.where(_first_step_mask(it), bx + abar * h, bx)
        if CARRY_ONLY:
            Pc, H = linear_scan_full(abar, bx, 1, T, False, NATIVE)
            P = P * take_time(Pc, T - 1, 1, T)
        else:
            H = linear_scan(abar, bx, 1, T, False, NATIVE)
            y = _sum_states(H * C1[:, :, None, :])  # (T, BD)
            if HAS_D:
                y = y + Dv[None, :] * u1
            if HAS_Z:
                y = y * (z1 * sigmoid(z1, FAST))
            if HAS_LEN:
                y = y * valid[:, None]
            tl.store(y_b + t0 * s_y_l + it[:, None] * s_y_l + idd[None, :] * s_y_d, y,
                     mask=(tt < L)[:, None] & md[None, :])
        h = take_time(H, T - 1, 1, T)
        u1, d1, z1, B1, C1, ts1 = u2, d2, z2, B2, C2, ts2
        u2, d2, z2, B2, C2, ts2 = u3, d3, z3, B3, C3, ts3

    if CARRY_ONLY:
        off = seg_base + (seg + zero64) * DIM * N
        _store_dn(seg_E_ptr + off, h, idd, n3, m_dn, N)
        _store_dn(seg_P_ptr + off, P, idd, n3, m_dn, N)
    elif WRITE_FINAL:
        _store_dn(hT_ptr + b * DIM * N, h, idd, n3, m_dn & (seg == n_segs - 1), N)


# --------------------------------------------------------------------------------------- backward
@triton.jit
def scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ts_ptr, rate_ptr, len_ptr, states_ptr,
    dy_ptr, dhT_ptr, seg_P_ptr, seg_W_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dts_ptr, dA_ptr, dD_ptr, dbias_ptr, drate_ptr, dh0_ptr,
    L, DIM, N, n_chunks, chunks_per_seg, n_segs, n_batch, seg_offset, L_part, s_part,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_z_b, s_z_d, s_z_l,
    s_B_b, s_B_n, s_B_l,
    s_C_b, s_C_n, s_C_l,
    s_ts_b, s_ts_l,
    s_dy_b, s_dy_d, s_dy_l,
    s_A_d, s_A_n,
    s_o_b, s_o_d, s_o_l,
    s_dz_b, s_dz_d, s_dz_l,
    T: tl.constexpr, BLOCK_D: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr,
    METHOD: tl.constexpr, EVENT: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr,
    HAS_DHT: tl.constexpr, CARRY_ONLY: tl.constexpr, NATIVE: tl.constexpr, FAST: tl.constexpr,
    ATOMIC_SUMS: tl.constexpr, LANE_SUMS: tl.constexpr, WANT_DTS: tl.constexpr = True,
):
    """Gradients, or with ``CARRY_ONLY`` the segment carry pass: writes ``W`` and ``P`` ``(B, n_segs, D, N)``,
    the adjoint message each segment sends to the one before it when nothing enters it from behind, and the
    product of the segment's decays.

    Outputs: ``du``/``ddelta`` ``(B, D, L)`` in the inputs' dtypes, with strides ``s_o_*`` (laid out like
    ``u``), and ``dz`` with strides ``s_dz_*`` (the caller may place it in a buffer of its own); the rest
    contiguous: ``dB``/``dC`` ``(1, B, N, L_part)`` zero-filled for ``ATOMIC_SUMS``, else
    ``(n_dblocks, B, N, L_part)``, with ``L_part`` the chunks' steps (``L`` rounded up to ``T``; ``LANE_SUMS``
    writes whole chunks, see :func:`_lane_sums_store`); ``dts`` ``(n_dblocks, B, L)`` per channel block
    (not written without ``WANT_DTS``: time steps that need no gradient, the usual case for data);
    the sums over time per segment and batch row in rows ``s_part`` apart (row ``seg * B + b``): ``dA``
    ``(D, N)`` and ``dD``/``dbias``/``drate`` ``(D,)`` (the launcher places them side by side in one row, so
    that one reduction sums them all); ``dh0`` ``(B, D, N)``."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2) + seg_offset
    zero64 = b * 0
    NEEDS_DELTA: tl.constexpr = not (EVENT and METHOD == 3)
    FULL: tl.constexpr = not CARRY_ONLY

    it = tl.arange(0, T)
    idd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = idd < DIM
    n3 = tl.arange(0, N2)[:, None, None] * N1 + tl.arange(0, N1)[None, None, :]
    mn3 = n3 < N
    m_dn = md[None, :, None] & mn3

    A3 = tl.load(A_ptr + idd[None, :, None] * s_A_d + n3 * s_A_n, mask=m_dn, other=-1.0).to(tl.float32)
    A = A3[:, None, :, :]
    A_log2e = A * 1.4426950408889634
    A_inv = 1.0 / A
    if HAS_D:
        Dv = tl.load(D_ptr + idd, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + idd, mask=md, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], tl.float32)
    if EVENT:
        rate = tl.load(rate_ptr + idd, mask=md, other=0.0).to(tl.float32)
        sp_rate = softplus(rate, FAST)
    else:
        sp_rate = tl.zeros([BLOCK_D], tl.float32)
    if HAS_LEN:
        length = tl.load(len_ptr + b).to(tl.int32)
        length = tl.minimum(tl.maximum(length, 0), L)
    else:
        length = L

    # Adjoint message entering this segment's last step from behind: the final state's gradient, run through
    # the carries of the segments after this one (padding is transparent).
    seg_base = (b * n_segs) * DIM * N
    if CARRY_ONLY:
        w = tl.zeros([N2, 1, BLOCK_D, N1], tl.float32)
        P = tl.full([N2, 1, BLOCK_D, N1], 1.0, tl.float32)
    else:
        if HAS_DHT:
            w = _load_dn(dhT_ptr + b * DIM * N, idd, n3, m_dn, N)
        else:
            w = tl.zeros([N2, 1, BLOCK_D, N1], tl.float32)
        for jj in range(0, n_segs - 1 - seg):
            off = seg_base + (n_segs - 1 - jj + zero64) * DIM * N
            w = _load_dn(seg_P_ptr + off, idd, n3, m_dn, N) * w + _load_dn(seg_W_ptr + off, idd, n3, m_dn, N)

    # Sums over time: (T, BLOCK_D) tiles added elementwise chunk after chunk, reduced once at the end.
    dA_acc = tl.zeros([N2, BLOCK_D, N1], tl.float32)
    dD_acc = tl.zeros([T, BLOCK_D], tl.float32)
    dbias_acc = tl.zeros([T, BLOCK_D], tl.float32)
    drate_acc = tl.zeros([T, BLOCK_D], tl.float32)

    u_b = u_ptr + b * s_u_b
    dt_b = delta_ptr + b * s_dt_b
    z_b = z_ptr + b * s_z_b
    B_b = B_ptr + b * s_B_b
    C_b = C_ptr + b * s_C_b
    ts_b = ts_ptr + b * s_ts_b
    dy_b = dy_ptr + b * s_dy_b
    st_b = states_ptr + (b * n_chunks) * DIM * N
    # du, ddelta: one layout, strides s_o_*; dz: strides s_dz_*; the other outputs are contiguous.
    o_td = b * s_o_b + idd[None, :] * s_o_d + it[:, None] * s_o_l  # (T, BD) offsets at t0 = 0
    o_dz = b * s_dz_b + idd[None, :] * s_dz_d + it[:, None] * s_dz_l
    if ATOMIC_SUMS:
        blk = b  # every channel block adds into one (B, N, L) buffer
    else:
        blk = pid_d * n_batch + b  # one slice per channel block
    o_nt = blk * N * L_part + n3 * L_part + it[None, :, None]  # (N2, T, N1)
    if LANE_SUMS:
        # Where each lane's 4 sums go (_lane_sums_store): state (dd // 2) * N1 + n1, steps 4 (dd % 2) + 0..3.
        dd = tl.arange(0, BLOCK_D)[None, None, :, None]
        o_lane = (blk * N + (dd // 2) * N1 + tl.arange(0, N1)[None, None, None, :]) * L_part + (dd % 2) * 4
    # The time steps' gradient always goes to per-block slices: all of a row's channel blocks reach the same
    # few addresses at about the same time (measured once with atomic adds here too: event mode 4-13 % slower).
    o_t = (pid_d * n_batch + b) * L + it

    c_begin = seg * chunks_per_seg
    c_end = tl.minimum(c_begin + chunks_per_seg, n_chunks)
    t_last = (c_end - 1 + zero64) * T
    m_last = (t_last + it < L) & (c_begin < c_end)
    u = _load_td_opt(u_b + t_last * s_u_l, s_u_l, s_u_d, it, idd, m_last, md, FULL)
    dtr = _load_td_opt(dt_b + t_last * s_dt_l, s_dt_l, s_dt_d, it, idd, m_last, md, NEEDS_DELTA)
    z = _load_td_opt(z_b + t_last * s_z_l, s_z_l, s_z_d, it, idd, m_last, md, HAS_Z)
    Bm = _load_ntn_opt(B_b + t_last * s_B_l, s_B_l, s_B_n, it, n3, m_last, mn3, FULL)
    Cm = _load_ntn(C_b + t_last * s_C_l, s_C_l, s_C_n, it, n3, m_last, mn3)
    ts = _load_td_opt(ts_b + t_last * s_ts_l, s_ts_l, 0, it, idd, m_last, md, EVENT)
    dy = _load_td(dy_b + t_last * s_dy_l, s_dy_l, s_dy_d, it, idd, m_last, md)
    # The state saved at each chunk's start is prefetched with the chunk's inputs: loaded where it is used,
    # its memory latency stood in every chunk's dependent chain.
    if FULL:
        h_start = _load_dn3(st_b + (c_end - 1 + zero64) * DIM * N, idd, n3, m_dn & (c_begin < c_end), N)
    for cc in range(0, c_end - c_begin):
        c = c_end - 1 - cc
        t0 = (c + zero64) * T
        tp = t0 - T  # the chunk before (prefetched; masked outside this segment)
        mp = (tp + it < L) & (tp + it >= 0) & (c - 1 >= c_begin)
        u_n = _load_td_opt(u_b + tp * s_u_l, s_u_l, s_u_d, it, idd, mp, md, FULL)
        dtr_n = _load_td_opt(dt_b + tp * s_dt_l, s_dt_l, s_dt_d, it, idd, mp, md, NEEDS_DELTA)
        z_n = _load_td_opt(z_b + tp * s_z_l, s_z_l, s_z_d, it, idd, mp, md, HAS_Z)
        B_n = _load_ntn_opt(B_b + tp * s_B_l, s_B_l, s_B_n, it, n3, mp, mn3, FULL)
        C_n = _load_ntn(C_b + tp * s_C_l, s_C_l, s_C_n, it, n3, mp, mn3)
        ts_n = _load_td_opt(ts_b + tp * s_ts_l, s_ts_l, 0, it, idd, mp, md, EVENT)
        dy_n = _load_td(dy_b + tp * s_dy_l, s_dy_l, s_dy_d, it, idd, mp, md)
        if FULL:
            h_start_n = _load_dn3(st_b + (c - 1 + zero64) * DIM * N, idd, n3, m_dn & (c - 1 >= c_begin), N)

        tt = t0 + it
        in_range = tt < L
        valid = (tt < length).to(tl.float32)
        dtB, dtA, dt_pre = _steps(dtr, bias, ts, sp_rate, valid, SOFTPLUS, HAS_BIAS, EVENT, NEEDS_DELTA, FAST)
        dtA4 = dtA[None, :, :, None]
        abar = transition(dtA4, A, A_log2e, METHOD, FAST)
        Cm4 = Cm[:, :, None, :]
        g_y = dy * valid[:, None]
        if HAS_Z:
            sz, dsz = silu_parts(z, FAST)
            dpre = g_y * sz
        else:
            dpre = g_y
        dpre4 = dpre[None, :, :, None]
        last = (it == T - 1)[None, :, None, None]
        a_next = shift_scan(abar, 1.0, 1, T, True, NATIVE)

        if CARRY_ONLY:
            # ---- adjoint only: g[t] = dh[t] + Abar[t+1] g[t+1] with the message w entering from behind
            dh = tl.where(last, dpre4 * Cm4 + w, dpre4 * Cm4)
            Pn, G = linear_scan_full(a_next, dh, 1, T, True, NATIVE)
            w = take_time(abar * G, 0, 1, T)
            # Pn[0] = Abar[1] ... Abar[T-1]; times Abar[0] it is the whole chunk's decay.
            P = P * take_time(abar * Pn, 0, 1, T)
        else:
            # ---- recompute the chunk's states from the one saved at its start
            v = u * valid[:, None]
            v4 = v[None, :, :, None]
            Bm4 = Bm[:, :, None, :]
            bx, f = _input_term(dtB, v, Bm, A, A_inv, METHOD, FAST)
            h0c = _take(h_start, FAST)[:, None, :, :]
            H = linear_scan(abar, tl.where(_first_step_mask(it), bx + abar * h0c, bx), 1, T, False, NATIVE)
            H_prev = shift_scan(H, h0c, 1, T, False, NATIVE)

            # ---- output gate and skip
            if HAS_D:
                du = dpre * Dv[None, :]
                dD_acc += dpre * u
            else:
                du = tl.zeros_like(u)
            if HAS_Z:
                y_ssm = _sum_states(H * Cm4)  # (T, BD)
                if HAS_D:
                    pre = y_ssm + Dv[None, :] * u
                else:
                    pre = y_ssm
                dz = g_y * pre * dsz
                tl.store(dz_ptr + o_dz + t0 * s_dz_l, dz, mask=in_range[:, None] & md[None, :])
            # C's gradient needs this block's states; take it now so that H is dead before the adjoint.
            if LANE_SUMS:
                _lane_sums_store(dpre4 * H, dC_ptr + o_lane + t0, ATOMIC_SUMS)
            else:
                dC_part = tl.sum(dpre4 * H, axis=2)  # (N2, T, N1)
                _store_sum(dC_ptr + o_nt + t0, dC_part, in_range[None, :, None] & mn3, ATOMIC_SUMS)

            # ---- adjoint recurrence, backwards: g[t] = dh[t] + Abar[t+1] g[t+1]; the carry w = Abar[T] g[T]
            dh = tl.where(last, dpre4 * Cm4 + w, dpre4 * Cm4)
            G = linear_scan(a_next, dh, 1, T, True, NATIVE)
            w = take_time(abar * G, 0, 1, T)

            # ---- gradients through Abar: d/dx with x = dtA * A
            dx = G * H_prev * transition_grad(abar, dtA4, A, METHOD)
            dA_acc += tl.sum(dx * dtA4, axis=1)
            ddtA = _sum_states(dx * A)  # (T, BD)

            # ---- gradients through Bbar u = f * v * B
            GB = G * Bm4
            if LANE_SUMS:
                _lane_sums_store(G * (f * v4), dB_ptr + o_lane + t0, ATOMIC_SUMS)
            else:
                dB_part = tl.sum(G * (f * v4), axis=2)  # (N2, T, N1): sum over this block's channels
                _store_sum(dB_ptr + o_nt + t0, dB_part, in_range[None, :, None] & mn3, ATOMIC_SUMS)
            if METHOD == 0:
                sGB = _sum_states(GB)  # (T, BD)
                dv = sGB * dtB
                ddtB = sGB * v
            elif METHOD == 3:
                dv = _sum_states(GB)
                ddtB = tl.zeros_like(dv)
            else:
                dv = _sum_states(GB * f)
                df = GB * v4
                if METHOD == 1:
                    # f = expm1(dtB A) / A: df/ddtB = exp(dtB A) = f A + 1; df/dA = (dtB (f A + 1) - f) / A
                    e = f * A + 1.0
                    ddtB = _sum_states(df * e)
                    dA_acc += tl.sum(df * (dtB[None, :, :, None] * e - f) * A_inv, axis=1)
                else:
                    # f = dtB r with r = 1 / (1 - dtB A / 2): df/ddtB = r^2; df/dA = f^2 / 2
                    r = 1.0 / (1.0 - 0.5 * (dtB[None, :, :, None] * A))
                    ddtB = _sum_states(df * r * r)
                    dA_acc += tl.sum(df * (0.5 * f * f), axis=1)
            du += dv * valid[:, None]
            tl.store(du_ptr + o_td + t0 * s_o_l, du, mask=in_range[:, None] & md[None, :])

            # ---- time steps, rate and delta
            ddtA = ddtA * valid[:, None]
            if EVENT:
                drate_acc += ddtA * (ts * valid[:, None])
                if WANT_DTS:
                    dts_part = tl.sum(ddtA * sp_rate[None, :], axis=1)  # (T,): a sum across the threads
                    tl.store(dts_ptr + o_t + t0, dts_part, mask=in_range)
            else:
                ddtB = ddtB + ddtA
            if NEEDS_DELTA:
                if SOFTPLUS:
                    ddelta = ddtB * sigmoid(dt_pre, FAST)
                else:
                    ddelta = ddtB
                ddelta = ddelta * md[None, :].to(tl.float32)
                dbias_acc += ddelta * in_range[:, None].to(tl.float32)
                tl.store(ddelta_ptr + o_td + t0 * s_o_l, ddelta, mask=in_range[:, None] & md[None, :])

        u, dtr, z, Bm, Cm, ts, dy = u_n, dtr_n, z_n, B_n, C_n, ts_n, dy_n
        if FULL:
            h_start = h_start_n

    if CARRY_ONLY:
        _store_dn(seg_W_ptr + seg_base + (seg + zero64) * DIM * N, w, idd, n3, m_dn, N)
        _store_dn(seg_P_ptr + seg_base + (seg + zero64) * DIM * N, P, idd, n3, m_dn, N)
    else:
        o_row = (seg * n_batch + b) * s_part  # this program's row of the sums over time
        tl.store(dA_ptr + o_row + idd[None, :, None] * N + n3, dA_acc, mask=m_dn)
        _store_dn(dh0_ptr + b * DIM * N, w, idd, n3, m_dn & (seg == 0), N)
        o_sd = o_row + idd
        if HAS_D:
            tl.store(dD_ptr + o_sd, tl.sum(dD_acc, axis=0), mask=md)
        if NEEDS_DELTA and HAS_BIAS:
            tl.store(dbias_ptr + o_sd, tl.sum(dbias_acc, axis=0), mask=md)
        if EVENT:
            tl.store(drate_ptr + o_sd, tl.sum(drate_acc, axis=0) * sigmoid(rate, FAST), mask=md)
