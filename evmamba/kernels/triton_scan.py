"""Selective scan on the Triton kernels: launchers, autograd wiring and :func:`selective_scan_triton`.

:func:`selective_scan_triton` has the signature and contract of
:func:`~evmamba.kernels.scan_ref.selective_scan_ref` (without ``chunk_size``): same shapes, the same
``lengths`` semantics, zero (not ``None``) gradients for inputs a mode does not use. Inputs may have any
strides (the kernels take strides; Triton specialises unit strides, so contiguous axes load vectorised).
The kernels compute in float32: ``float64`` inputs are refused (the reference serves them; see
:mod:`evmamba.kernels.backends`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .discretization import METHOD_CODES, check_discretization
from .triton_launch import dummy, launch
from .triton_primitives import INTERPRETING, next_pow2
from .triton_scan_kernels import scan_bwd_kernel, scan_fwd_kernel

#: Time steps per chunk. The backward recomputes one chunk from the state saved at its start, so the
#: saved states take ``1 / CHUNK`` of the memory of all ``(B, D, L, N)`` states.
CHUNK = 8

#: Tests may set this to force ``tl.associative_scan`` under the interpreter (slow: one element per call).
FORCE_NATIVE_SCAN = False

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class LaunchConfig:
    """Tile shape of one program: ``BLOCK_D`` channels, ``T`` steps, ``N_pad = N2 * N1`` states."""

    T: int
    block_d: int
    n1: int
    n2: int
    num_warps: int


#: Tile overrides for the forward and the backward kernel (``None``: :func:`launch_config`'s choice). The
#: benchmark's tile sweep sets them; both must use the same ``T``.
CONFIG_OVERRIDES: dict[str, LaunchConfig | None] = {"fwd": None, "bwd": None}


def launch_config(dim: int, n: int, kind: str = "fwd") -> LaunchConfig:
    """Tile for ``dim`` channels and ``n`` states, for the ``"fwd"`` or ``"bwd"`` kernel.

    Each thread holds ``N2 x T`` elements of the 4-D tile; the ``N1 x BLOCK_D`` rest lies across the threads.
    Chosen by measurement on an H200 at ``(16, 256, 8192, 16)`` (docs/benchmarks.md): ``N1 = 4, N2 = 4`` (32
    elements per thread); the forward runs 4 warps (32 channels) per program; the backward, with many more
    live tiles and cross-channel sums, one warp (8 channels), which needs no cross-warp reductions or barriers.
    Larger ``N`` widens ``N1`` so that the per-thread tile stays the same size.
    """
    override = CONFIG_OVERRIDES.get(kind)
    if override is not None:
        return override
    return _default_config(dim, n, kind)


@functools.lru_cache(maxsize=256)
def _default_config(dim: int, n: int, kind: str) -> LaunchConfig:
    # Cached: every launcher call asks, and its host time is what bounds the layer in bfloat16.
    n_pad = next_pow2(max(1, n))
    n1 = min(n_pad, max(4, n_pad // 4))
    n2 = n_pad // n1
    if INTERPRETING:
        # Small blocks exercise several channel blocks (and their partial sums) at test sizes.
        return LaunchConfig(T=CHUNK, block_d=min(16, next_pow2(dim)), n1=n1, n2=n2, num_warps=1)
    num_warps = 4 if kind == "fwd" else 1
    lanes_d = max(1, 32 // n1)
    return LaunchConfig(T=CHUNK, block_d=lanes_d * num_warps, n1=n1, n2=n2, num_warps=num_warps)


# ------------------------------------------------------------------------------------ validation
def _check_tensor(name: str, t, shape: tuple, device, floating: bool = True) -> None:
    where = "selective_scan_triton"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor of shape {shape}; got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{where}: {name} must have shape {tuple(shape)}; got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{where}: {name} is on {t.device} but u is on {device}")
    if floating and t.dtype not in _FLOATS:
        raise TypeError(f"{where}: {name} must be float32, bfloat16 or float16 (float64 runs on the reference "
                        f"backend); got {t.dtype}")


def _validate(u, delta, A, B, C, D, z, delta_bias, dt, rate, discretization, initial_state, lengths):
    where = "selective_scan_triton"
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"{where}: u must be a tensor of shape (B, D, L); got {got}")
    if not INTERPRETING and not u.is_cuda:
        raise ValueError(f"{where}: u must be a CUDA tensor (the Triton kernels run on the GPU); got {u.device}")
    check_discretization(discretization)
    batch, dim, L = u.shape
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != dim:
        got = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"{where}: A must have shape (D, N) = ({dim}, N); got {got}")
    n = A.shape[1]
    dev = u.device
    _check_tensor("u", u, (batch, dim, L), dev)
    _check_tensor("delta", delta, (batch, dim, L), dev)
    _check_tensor("A", A, (dim, n), dev)
    _check_tensor("B", B, (batch, n, L), dev)
    _check_tensor("C", C, (batch, n, L), dev)
    for name, t, shape in (("D", D, (dim,)), ("z", z, (batch, dim, L)), ("delta_bias", delta_bias, (dim,)),
                           ("initial_state", initial_state, (batch, dim, n))):
        if t is not None:
            _check_tensor(name, t, shape, dev)
    if dt is not None:
        _check_tensor("dt", dt, (batch, L), dev)
        if rate is None:
            raise ValueError(f"{where}: rate (D,) is required with dt (event mode); got None")
    if rate is not None:
        _check_tensor("rate", rate, (dim,), dev)
    if lengths is not None:
        _check_tensor("lengths", lengths, (batch,), dev, floating=False)
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"{where}: lengths must be an integer tensor; got {lengths.dtype}")


# --------------------------------------------------------------------------------------- launchers
def _strides3(t):
    """``(batch, row, time)`` strides, zeros for a missing tensor."""
    return (0, 0, 0) if t is None else tuple(t.stride())


def _alloc(*shape: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Every buffer a kernel writes comes from here (tests fill them with NaN to catch unwritten elements)."""
    return torch.empty(*shape, dtype=dtype, device=device)


def _alloc_td(batch: int, dim: int, L: int, dtype: torch.dtype, device, channels_last: bool) -> torch.Tensor:
    """A ``(B, D, L)`` buffer from :func:`_alloc`, channels innermost (a transposed ``(B, L, D)``) or time."""
    if channels_last:
        return _alloc(batch, L, dim, dtype=dtype, device=device).transpose(1, 2)
    return _alloc(batch, dim, L, dtype=dtype, device=device)


def _views(buf: torch.Tensor, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    """Consecutive contiguous views of ``buf`` (1-D) with the given shapes: one allocation for several scratch
    buffers (each allocation costs host time, which bounds the layer's speed in bfloat16)."""
    sizes = [math.prod(shape) for shape in shapes]
    pieces = buf.split_with_sizes(sizes + [buf.numel() - sum(sizes)])
    return [piece.view(shape) for piece, shape in zip(pieces, shapes)]


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)``, without the call where ``t`` has that dtype already (each call costs host time)."""
    return t if t.dtype == dtype else t.to(dtype)


def _alloc_like(t: torch.Tensor) -> torch.Tensor:
    """Output buffer with ``t``'s shape, dtype and strides (``empty_like`` keeps a dense tensor's layout)."""
    return torch.empty_like(t, memory_format=torch.preserve_format)


#: Warps per multiprocessor that the segment split aims for, per kernel. The kernels' register use lets
#: about 8 warps be resident; the backward gains from a second wave (measured: 2.71 -> 2.47 ms at 8 -> 16).
#: The backward's split is chosen by :func:`_backward_segments`, which uses this only to break ties.
TARGET_WARPS_PER_SM = {"fwd": 8, "bwd": 16}
#: Registers per thread of the backward kernel (255 on sm_90 for every mode and dtype, by
#: scripts/sass_counts.py; allocated in units of 8): they bound how many of its programs a multiprocessor holds.
BWD_REGISTERS = 256
#: The backward's carry pass costs about this fraction of its main pass per chunk (16 x 256 x 8192 and
#: 64 x 256 x 2048 on an H200, 2026-12-01).
BWD_CARRY_COST = 0.2
#: A segment is at least this many chunks long, so its carry (a few loads per state) stays negligible.
MIN_CHUNKS_PER_SEGMENT = 16
#: Tests may set this to force the number of chunks per segment.
CHUNKS_PER_SEGMENT_OVERRIDE: int | None = None
#: Tests may set this to force the forward carry pass's pieces per segment.
CARRY_SPLIT_OVERRIDE: int | None = None


def segment_plan(batch: int, dim: int, L: int, cfg: LaunchConfig, device: torch.device,
                 kind: str = "fwd") -> tuple[int, int]:
    """``(n_segs, chunks_per_seg)``: how many parallel segments the sequence is cut into.

    Rows x channel blocks give ``batch * ceil(dim / block_d)`` programs; when that is too few to keep
    ``TARGET_WARPS_PER_SM`` warps on every multiprocessor, the time axis supplies the rest.
    """
    n_chunks = _cdiv(L, cfg.T)
    if CHUNKS_PER_SEGMENT_OVERRIDE is not None:
        per_seg = CHUNKS_PER_SEGMENT_OVERRIDE
    elif INTERPRETING:
        per_seg = MIN_CHUNKS_PER_SEGMENT
    else:
        props = _device_properties(device)
        programs = batch * _cdiv(dim, cfg.block_d)
        want = _program_target(props, cfg, kind)
        if kind == "bwd":
            per_seg = _backward_segments(programs, n_chunks, want, cfg, props)
        else:
            n_segs = max(1, min(_cdiv(want, programs), n_chunks // MIN_CHUNKS_PER_SEGMENT))
            per_seg = _cdiv(n_chunks, n_segs)
    per_seg = max(1, per_seg)
    return _cdiv(n_chunks, per_seg), per_seg


def _device_properties(device: torch.device):
    """``torch.cuda.get_device_properties`` of a CUDA device, looked up once per device index."""
    return _properties_of(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _properties_of(index: int):
    return torch.cuda.get_device_properties(index)


def _program_target(props, cfg: LaunchConfig, kind: str) -> int:
    """Programs that keep ``TARGET_WARPS_PER_SM[kind]`` warps on every multiprocessor."""
    return _cdiv(props.multi_processor_count * TARGET_WARPS_PER_SM[kind], cfg.num_warps)


def _backward_segments(programs: int, n_chunks: int, want: int, cfg: LaunchConfig, props) -> int:
    """Chunks per segment for the backward, by a model of its waves: a multiprocessor holds a fixed number of
    its programs (registers), every program of a wave takes as long as its segment, and the carry pass adds
    ``BWD_CARRY_COST`` of that per wave of its own. A last wave that is barely filled costs a whole one (on an
    H200 at 16 x 256 x 8192: 1.45 waves took 23 % longer than 1.94), so the split avoids it. The model leaves
    out what each segment costs by itself (its start, its partial sums), so among the splits within 3 % of the
    cheapest it takes the one with programs nearest ``want``, then the one with fewer segments."""
    regs = getattr(props, "regs_per_multiprocessor", 65536)
    slots = props.multi_processor_count * max(1, regs // (BWD_REGISTERS * 32 * cfg.num_warps))
    return _plan_by_waves(programs, n_chunks, want, slots)


@functools.lru_cache(maxsize=256)
def _plan_by_waves(programs: int, n_chunks: int, want: int, slots: int) -> int:
    # Splits past four times the warp target only add segments; the bound keeps long sequences' search short.
    most = max(1, min(n_chunks // MIN_CHUNKS_PER_SEGMENT, 4 * _cdiv(want, programs)))
    plans = []  # (cost in chunk-times, distance from want, segments, chunks per segment)
    for split in range(1, most + 1):
        per_seg = _cdiv(n_chunks, split)
        n_segs = _cdiv(n_chunks, per_seg)
        cost = per_seg * (_cdiv(programs * n_segs, slots) + BWD_CARRY_COST * _cdiv(programs * (n_segs - 1), slots))
        plans.append((cost, abs(programs * n_segs - want), n_segs, per_seg))
    cheapest = min(p[0] for p in plans)
    return min(p[1:] for p in plans if p[0] <= 1.03 * cheapest)[2]


def carry_plan(batch: int, dim: int, n_chunks: int, n_segs: int, per_seg: int, cfg: LaunchConfig,
               device: torch.device) -> tuple[int, int, int]:
    """``(n_segs, chunks_per_seg, carry_split)`` for the forward: the carry pass covers all segments but the
    last, so it has fewer programs than the main pass; cutting each of its segments into ``carry_split``
    pieces (each a segment of its own, of at least ``MIN_CHUNKS_PER_SEGMENT`` chunks) gives it as many
    programs as the main pass aims for. ``chunks_per_seg`` is rounded up to a multiple of ``carry_split``."""
    if n_segs <= 1:
        return n_segs, per_seg, 1
    if CARRY_SPLIT_OVERRIDE is not None:
        split = CARRY_SPLIT_OVERRIDE
    elif INTERPRETING:
        split = 1
    else:
        want = _program_target(_device_properties(device), cfg, "fwd")
        carry_programs = batch * _cdiv(dim, cfg.block_d) * (n_segs - 1)
        split = min(_cdiv(want, carry_programs), per_seg // MIN_CHUNKS_PER_SEGMENT)
    split = max(1, min(split, per_seg))
    per_seg = _cdiv(per_seg, split) * split
    n_segs = _cdiv(n_chunks, per_seg)
    return n_segs, per_seg, (split if n_segs > 1 else 1)


def scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dt, rate, method, initial_state,
                 lengths, want_final: bool, save_states: bool):
    """Launch the forward kernel (after its carry pass when the sequence is split into segments).
    Returns ``(y, final_state or None, chunk_states or None)``."""
    batch, dim, L = u.shape
    n = A.shape[1]
    cfg = launch_config(dim, n, "fwd")
    n_chunks = _cdiv(L, cfg.T)
    n_segs, per_seg = segment_plan(batch, dim, L, cfg, u.device, "fwd")
    n_segs, per_seg, split = carry_plan(batch, dim, n_chunks, n_segs, per_seg, cfg, u.device)
    dev = u.device
    y = _alloc_like(u)
    hT = _alloc(batch, dim, n, device=dev, dtype=torch.float32) if want_final else dummy(u)
    # The chunk states and the segments' carries: one float32 allocation (an absent one takes no room).
    states_shape = (batch, n_chunks, dim, n) if save_states else (0,)
    carry_shape = (batch, n_segs * split, dim, n) if n_segs > 1 else (0,)
    states, seg_E, seg_P = _views(
        _alloc(math.prod(states_shape) + 2 * math.prod(carry_shape), device=dev, dtype=torch.float32),
        states_shape, carry_shape, carry_shape)
    if not save_states:
        states = dummy(u)
    if n_segs <= 1:
        seg_E = seg_P = dummy(u)
    event = dt is not None
    d = dummy(u)

    def args(chunks_per_seg: int, segs: int, carry_split: int) -> tuple:
        return (
            u, delta, A, B, C, d if D is None else D, d if z is None else z,
            d if delta_bias is None else delta_bias, d if dt is None else dt, d if rate is None else rate,
            d if initial_state is None else initial_state, d if lengths is None else lengths,
            y, hT, states, seg_E, seg_P,
            L, dim, n, n_chunks, chunks_per_seg, segs, carry_split,
            *u.stride(), *delta.stride(), *_strides3(z), *B.stride(), *C.stride(),
            *((0, 0) if dt is None else dt.stride()), *y.stride(), *A.stride(),
            *((0, 0, 0) if initial_state is None else initial_state.stride()),
        )

    flags = dict(
        T=cfg.T, BLOCK_D=cfg.block_d, N1=cfg.n1, N2=cfg.n2,
        METHOD=METHOD_CODES[method], EVENT=event, SOFTPLUS=bool(delta_softplus),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        HAS_H0=initial_state is not None, HAS_LEN=lengths is not None,
        NATIVE=(not INTERPRETING) or FORCE_NATIVE_SCAN, FAST=not INTERPRETING,
    )
    n_dblocks = _cdiv(dim, cfg.block_d)
    if n_segs > 1:
        # The last segment's carry is never used; each other segment's comes in `split` pieces.
        launch(scan_fwd_kernel, (n_dblocks, batch, (n_segs - 1) * split), args(per_seg // split, n_segs * split, 1),
               cfg.num_warps, **flags, SAVE_STATES=False, WRITE_FINAL=False, CARRY_ONLY=True)
    launch(scan_fwd_kernel, (n_dblocks, batch, n_segs), args(per_seg, n_segs, split), cfg.num_warps, **flags,
           SAVE_STATES=save_states, WRITE_FINAL=want_final, CARRY_ONLY=False)
    return y, (hT if want_final else None), (states if save_states else None)


#: How the backward sums the gradients of ``B`` and ``C`` over channel blocks: ``True`` adds
#: them in place with atomic adds (fastest; the order of the additions, so the last bits, vary from run to run),
#: ``False`` writes one slice per block and sums them afterwards (bitwise reproducible), ``None`` chooses
#: ``False`` exactly when ``torch.use_deterministic_algorithms(True)`` is in force.
ATOMIC_CHANNEL_SUMS: bool | None = None


def use_atomic_sums() -> bool:
    """Whether this backward adds the channel blocks' gradients of ``B`` and ``C`` atomically (see above)."""
    if ATOMIC_CHANNEL_SUMS is not None:
        return ATOMIC_CHANNEL_SUMS
    return not torch.are_deterministic_algorithms_enabled()


#: Whether the backward may sum the gradients of ``B`` and ``C`` over a program's channels with its
#: reduce-scatter (``_lane_sums_store``) where the tile allows it; ``False`` keeps ``tl.sum`` (tests, A/B timing).
LANE_SUMS = True


def lane_sums_apply(cfg: LaunchConfig, n: int) -> bool:
    """Whether the backward's channel sums use the reduce-scatter: compiled kernels (inline PTX) on the one tile
    whose thread layout it is written for -- one warp, 8 channels x 4 state lanes, 4 x 8 values a thread,
    exactly 16 states (no padded ones)."""
    return (LANE_SUMS and not INTERPRETING and n == 16 and cfg.num_warps == 1
            and (cfg.T, cfg.block_d, cfg.n1, cfg.n2) == (8, 8, 4, 4))


def scan_backward(dy, dhT, u, delta, A, B, C, D, z, delta_bias, delta_softplus, dt, rate, method,
                  lengths, states, dz_out=None, bc_float32: bool = False, want_ddt: bool = True):
    """Launch the backward kernel (after its carry pass when split into segments) and reduce its partial sums.
    Returns gradients in the inputs' dtypes: ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, ddt, drate,
    dinitial_state)`` (the last in float32). ``dz_out``: a ``(B, D, L)`` tensor of ``z``'s dtype (any strides)
    that receives ``dz`` (the layer's fused path passes half of its input projection's gradient buffer).
    ``bc_float32``: ``dB`` and ``dC`` as the float32 sums (views, rows ``L`` rounded up to whole chunks apart),
    for a caller that copies them on anyway. ``want_ddt=False`` (event mode, time steps that need no gradient:
    data, as in training) skips their gradient, a sum over channels per step, and returns ``None`` for it."""
    batch, dim, L = u.shape
    n = A.shape[1]
    cfg = launch_config(dim, n, "bwd")
    if cfg.T != CHUNK:
        raise ValueError(f"scan_backward: the backward tile must use T = {CHUNK} (the saved states); got {cfg.T}")
    n_chunks = _cdiv(L, cfg.T)
    n_dblocks = _cdiv(dim, cfg.block_d)
    n_segs, per_seg = segment_plan(batch, dim, L, cfg, u.device, "bwd")
    dev = u.device
    f32 = dict(device=dev, dtype=torch.float32)
    event = dt is not None
    needs_delta = not (event and method == "dirac")
    want_dts = event and want_ddt

    atomic = use_atomic_sums()
    lane_sums = lane_sums_apply(cfg, n)
    # Sums over channels for B and C: one buffer that every channel block adds into, or one slice per block;
    # rows of whole chunks (the lane sums write 4 steps at a time), cut back to L below.
    L_part = n_chunks * cfg.T
    n_slices = 1 if atomic else n_dblocks
    bc_part = (torch.zeros if atomic else _alloc)(2, n_slices, batch, n, L_part, **f32)
    dB_part, dC_part = bc_part.unbind(0)
    # du, ddelta and dz are laid out like u: channels innermost when u has them innermost (the layer's views of
    # its projections), so that what the layer does with them next (an add, the projections' backward, the
    # convolution's backward) reads them without a copy or a change of layout.
    channels_last = u.stride(1) < u.stride(2)
    du = _alloc_td(batch, dim, L, u.dtype, dev, channels_last)
    ddelta = (_alloc_td(batch, dim, L, delta.dtype, dev, channels_last) if needs_delta
              else torch.zeros(batch, dim, L, device=dev, dtype=delta.dtype))
    if z is None:
        dz = dummy(u)
    else:
        dz = dz_out if dz_out is not None else _alloc_td(batch, dim, L, z.dtype, dev, channels_last)
    # The float32 scratch in one allocation. Each program writes one row of the sums over time: dA (D x N),
    # then dD, the delta bias's and the rate's (D each, those that are computed), so that one reduction over
    # the rows (segments x batch) gives them all.
    has_bias_grad = needs_delta and delta_bias is not None
    col = {}  # column of each per-channel sum that this backward computes
    for name, present in (("D", D is not None), ("bias", has_bias_grad), ("rate", event)):
        if present:
            col[name] = dim * n + len(col) * dim
    row = dim * n + len(col) * dim
    n_seg_buf = n_segs if n_segs > 1 else 0
    part, dh0, seg_W, seg_P, dts_part = _views(
        _alloc(n_segs * batch * row + batch * dim * n + 2 * batch * n_seg_buf * dim * n
               + (n_dblocks * batch * L if want_dts else 0), **f32),
        (n_segs * batch, row), (batch, dim, n), (batch, n_seg_buf, dim, n), (batch, n_seg_buf, dim, n),
        (n_dblocks, batch, L) if want_dts else (0,))
    dA_part = part.narrow(1, 0, dim * n)
    dD_part, dbias_part, drate_part = (part.narrow(1, col[k], dim) if k in col else dummy(u)
                                       for k in ("D", "bias", "rate"))
    if n_segs <= 1:
        seg_W = seg_P = dummy(u)
    if not want_dts:
        dts_part = dummy(u)
    d = dummy(u)

    def args(seg_offset: int) -> tuple:
        return (
            u, delta, A, B, C, d if D is None else D, d if z is None else z,
            d if delta_bias is None else delta_bias, d if dt is None else dt,
            d if rate is None else rate, d if lengths is None else lengths,
            states, dy, d if dhT is None else dhT, seg_P, seg_W,
            du, ddelta, dz, dB_part, dC_part, dts_part, dA_part, dD_part, dbias_part, drate_part, dh0,
            L, dim, n, n_chunks, per_seg, n_segs, batch, seg_offset, L_part, row,
            *u.stride(), *delta.stride(), *_strides3(z), *B.stride(), *C.stride(),
            *((0, 0) if dt is None else dt.stride()), *dy.stride(), *A.stride(), *du.stride(),
            *(dz.stride() if z is not None else (0, 0, 0)),
        )

    flags = dict(
        T=cfg.T, BLOCK_D=cfg.block_d, N1=cfg.n1, N2=cfg.n2,
        METHOD=METHOD_CODES[method], EVENT=event, SOFTPLUS=bool(delta_softplus),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        HAS_LEN=lengths is not None, HAS_DHT=dhT is not None, ATOMIC_SUMS=atomic, LANE_SUMS=lane_sums,
        WANT_DTS=want_dts, NATIVE=(not INTERPRETING) or FORCE_NATIVE_SCAN, FAST=not INTERPRETING,
    )
    if n_segs > 1:
        # Segments 1..S-1 send messages; segment 0 would send to nothing before it.
        launch(scan_bwd_kernel, (n_dblocks, batch, n_segs - 1), args(1), cfg.num_warps, **flags, CARRY_ONLY=True)
    launch(scan_bwd_kernel, (n_dblocks, batch, n_segs), args(0), cfg.num_warps, **flags, CARRY_ONLY=False)
    sums = part.sum(0)  # (row,): dA, then the per-channel sums
    dA = _as(sums.narrow(0, 0, dim * n).view(dim, n), A.dtype)
    dD = None if D is None else _as(sums.narrow(0, col["D"], dim), D.dtype)
    if delta_bias is None:
        dbias = None
    elif has_bias_grad:
        dbias = _as(sums.narrow(0, col["bias"], dim), delta_bias.dtype)
    else:  # delta takes no part (event mode, dirac): its bias has a zero gradient
        dbias = torch.zeros_like(delta_bias)
    drate = _as(sums.narrow(0, col["rate"], dim), rate.dtype) if event else None
    bc_sum = bc_part.select(1, 0) if atomic else bc_part.sum(1)  # (2, B, N, L_part)
    if L_part != L:
        bc_sum = bc_sum.narrow(3, 0, L)
    dB, dC = bc_sum.unbind(0)
    if not bc_float32:
        dB, dC = _as(dB, B.dtype), _as(dC, C.dtype)
    dts = _as(dts_part.sum(0), dt.dtype) if want_dts else None
    return du, ddelta, dA, dB, dC, dD, (dz if z is not None else None), dbias, dts, drate, dh0


# ----------------------------------------------------------------------------------------- autograd
class SelectiveScanFunction(torch.autograd.Function):
    """Differentiable selective scan on the Triton kernels (see :func:`selective_scan_triton`)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, dt, rate, initial_state, lengths,
                delta_softplus, method):
        y, hT, states = scan_forward(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, dt, rate, method, initial_state, lengths,
            want_final=True, save_states=True,
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, dt, rate, lengths, states)
        ctx.delta_softplus = delta_softplus
        ctx.method = method
        ctx.h0_dtype = None if initial_state is None else initial_state.dtype
        ctx.set_materialize_grads(False)
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        u, delta, A, B, C, D, z, delta_bias, dt, rate, lengths, states = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(u)
        g = ctx.needs_input_grad
        du, ddelta, dA, dB, dC, dD, dz, dbias, dts, drate, dh0 = scan_backward(
            dy, dhT, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, dt, rate, ctx.method,
            lengths, states, want_ddt=g[8],
        )
        if rate is not None and drate is None:  # standard mode: the rate takes part with a zero gradient
            drate = torch.zeros_like(rate)
        if delta_bias is not None and dbias is None:
            dbias = torch.zeros_like(delta_bias)
        pick = lambda i, t: t if g[i] else None  # noqa: E731
        return (
            pick(0, du),
            pick(1, ddelta),
            pick(2, dA),
            pick(3, dB),
            pick(4, dC),
            pick(5, dD),
            pick(6, dz),
            pick(7, dbias),
            pick(8, dts),
            pick(9, drate),
            pick(10, None if ctx.h0_dtype is None else dh0.to(ctx.h0_dtype)),
            None,
            None,
            None,
        )


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    dt: torch.Tensor | None = None,
    rate: torch.Tensor | None = None,
    discretization: str = "mamba",
    initial_state: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Selective scan on the Triton kernels; the contract of :func:`~evmamba.kernels.scan_ref.selective_scan_ref`.

    Shapes (any strides): ``u``, ``delta``, ``z``: ``(B, D, L)``; ``A``: ``(D, N)``; ``B``, ``C``:
    ``(B, N, L)``; ``D``, ``delta_bias``, ``rate``: ``(D,)``; ``dt``: ``(B, L)``; ``initial_state``:
    ``(B, D, N)``; ``lengths``: ``(B,)`` integers. Returns ``y`` ``(B, D, L)`` in ``u``'s dtype (strides like
    ``u``), and with ``return_final_state`` the final state ``(B, D, N)`` in float32. Activations may be
    float32, bfloat16 or float16; all arithmetic and the state are float32.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias, dt, rate, discretization, initial_state, lengths)
    # The kernels read the (D,) and (B,) vectors with unit stride; a strided view is copied (D elements).
    D, delta_bias, rate, lengths = (None if v is None else v.contiguous() for v in (D, delta_bias, rate, lengths))
    inputs = (u, delta, A, B, C, D, z, delta_bias, dt, rate, initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        y, hT = SelectiveScanFunction.apply(u, delta, A, B, C, D, z, delta_bias, dt, rate, initial_state,
                                            lengths, bool(delta_softplus), discretization)
    else:
        y, hT, _ = scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dt, rate,
                                discretization, initial_state, lengths, want_final=return_final_state,
                                save_states=False)
    return (y, hT) if return_final_state else y
