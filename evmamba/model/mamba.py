"""The ``Mamba`` layer: a selective state-space layer (Mamba-1) with optional event-based discretization.

The contract (constructor, ``forward``, ``step``, ``allocate_inference_cache``, cache keys and shapes) is fixed
by the project's specification; see the class docstring. The discretization formulas live in
:mod:`evmamba.kernels.discretization` and nowhere else.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.checks import check_int, check_number
from ..kernels import DISCRETIZATIONS, conv_backend, mamba_step, scan_backend, selective_scan
from ..kernels.backends import KERNEL_DTYPES
from ..kernels.discretization import check_discretization

# Keys of a layer's inference cache.
CACHE_KEYS = ("conv_state", "lrnn_state", "seqlen_offset")

#: Training forwards on the Triton kernels run conv, projections and scan as one autograd node
#: (:mod:`~evmamba.model.mamba_inner`); ``False`` composes them from separate nodes (tests, A/B timing).
INNER_IN_ONE_NODE = True


def scan_inputs(x_dbl: torch.Tensor, dt_proj_weight: torch.Tensor, dt_rank: int, d_state: int):
    """``(delta, B, C)`` for the scan from ``x_proj``'s output ``x_dbl`` ``(B, L, R + 2N)``: ``delta = dt_low
    W_dt^T`` ``(B, Di, L)`` (``dt_proj``'s bias is added inside the scan) and ``B``, ``C`` ``(B, N, L)`` views."""
    dt_low, Bm, Cm = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    delta = (dt_low @ dt_proj_weight.t()).transpose(1, 2)
    return delta, Bm.transpose(1, 2), Cm.transpose(1, 2)


class EventRate(nn.Module):
    """Holds the event-mode decay rate: ``dtA = integration_timestep * softplus(bias)``, one rate per channel.

    Called ``dtA_proj`` inside :class:`Mamba`, with the parameter ``bias``, so that the name matches lrnnx's
    ``dtA_proj.bias`` (whose ``dtA_proj.weight`` is never used and is not kept here).
    """

    def __init__(self, d_inner: int, device=None, dtype=None):
        super().__init__()
        self.bias = nn.Parameter(torch.empty(d_inner, device=device, dtype=dtype))

    def rate(self) -> torch.Tensor:
        """``softplus(bias)``: decay rate per channel, in 1 / (unit of ``integration_timesteps``)."""
        return F.softplus(self.bias)


def _positive_float(value: Any, name: str, allow_zero: bool = False) -> float:
    return check_number(value, name, 0.0, open_min=not allow_zero)


#: CUDA time-step tensors whose values passed the check, by id: (weak reference, version counter then). The
#: layers of a model receive the same tensor; each check waits for the GPU, so it is done once per tensor and
#: again only after an in-place change (which advances the version counter). CPU tensors are always checked
#: (their memory can change outside torch, e.g. through a NumPy view, without advancing the counter).
_CHECKED_TIMESTEPS: dict[int, tuple[weakref.ref, int]] = {}


def _checked_before(dt: torch.Tensor) -> bool:
    entry = _CHECKED_TIMESTEPS.get(id(dt))
    return entry is not None and entry[0]() is dt and not dt.is_inference() and entry[1] == dt._version


def _remember_checked(dt: torch.Tensor) -> None:
    if dt.is_cuda and not dt.is_inference():  # inference tensors have no version counter
        key = id(dt)
        _CHECKED_TIMESTEPS[key] = (weakref.ref(dt, lambda _ref, key=key: _CHECKED_TIMESTEPS.pop(key, None)),
                                   dt._version)


class Mamba(nn.Module):
    """Selective state-space layer with optional event-based (asymmetric) discretization.

    ``Mamba(d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1,
    dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False, use_fast_path=True,
    layer_idx=None, device=None, dtype=None, discretization="mamba")``

    Shapes: input and output ``(B, L, d_model)``; ``d_inner = expand * d_model``; the state is
    ``(B, d_inner, d_state)``.

    Without ``integration_timesteps`` the standard Mamba discretization is used (one input-dependent step
    ``dtB = softplus(dt_proj(x) + dt_bias)`` for decay and input). With ``integration_timesteps`` (the gap to
    the previous element, e.g. in ms) the decay step is ``dtA = integration_timesteps * softplus(rate)`` with
    a learned per-channel rate (``dtA_proj.bias``), while the input step stays ``dtB``.

    The initial rates are set by :meth:`init_event_rate` so that, in the units of ``integration_timesteps``,
    the channels' slowest decay time constants are log-spaced between :attr:`event_tau_min` and
    :attr:`event_tau_max` (defaults 1 and 1000: 1 ms to 1 s for time steps in ms). Each state ``n`` of a channel
    decays ``|A[d, n]|`` times faster than its slowest state (``|A| = 1 .. d_state`` at initialisation).

    Parameters are named as in lrnnx's ``Mamba`` (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``,
    ``D``, ``out_proj``, event rate ``dtA_proj.bias``), so an lrnnx state dict loads with
    ``load_state_dict`` (its unused ``dtA_proj.weight`` is dropped; see :meth:`_load_from_state_dict`).
    """

    event_tau_min: float = 1.0
    event_tau_max: float = 1000.0

    def __init__(
        self,
        d_model,
        d_state=16,
        d_conv=4,
        expand=2,
        dt_rank="auto",
        dt_min=0.001,
        dt_max=0.1,
        dt_init="random",
        dt_scale=1.0,
        dt_init_floor=1e-4,
        conv_bias=True,
        bias=False,
        use_fast_path=True,
        layer_idx=None,
        device=None,
        dtype=None,
        discretization="mamba",
    ):
        super().__init__()
        self.d_model = check_int(d_model, "d_model")
        self.d_state = check_int(d_state, "d_state")
        self.d_conv = check_int(d_conv, "d_conv")
        if isinstance(expand, bool) or not isinstance(expand, (int, float)) or not expand > 0:
            raise ValueError(f"expand must be a positive number; got {expand!r}")
        d_inner = expand * d_model
        if d_inner != int(d_inner) or int(d_inner) < 1:
            raise ValueError(f"expand * d_model must be a positive whole number; got {expand} * {d_model} = {d_inner}")
        self.expand = expand
        self.d_inner = int(d_inner)
        if dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        elif isinstance(dt_rank, str):
            raise ValueError(f"dt_rank must be 'auto' or a positive int; got {dt_rank!r}")
        else:
            self.dt_rank = check_int(dt_rank, "dt_rank")
        dt_min = _positive_float(dt_min, "dt_min")
        dt_max = _positive_float(dt_max, "dt_max")
        if dt_min > dt_max:
            raise ValueError(f"dt_min must be <= dt_max; got dt_min={dt_min}, dt_max={dt_max}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant'; got {dt_init!r}")
        dt_scale = _positive_float(dt_scale, "dt_scale")
        dt_init_floor = _positive_float(dt_init_floor, "dt_init_floor", allow_zero=True)
        self.discretization = check_discretization(discretization)
        if layer_idx is not None and (isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or layer_idx < 0):
            raise ValueError(f"layer_idx must be None or a non-negative int; got {layer_idx!r}")
        self.use_fast_path = bool(use_fast_path)
        self.layer_idx = layer_idx
        fk = {"device": device, "dtype": dtype}

        self.in_proj = nn.Linear(self.d_model, 2 * self.d_inner, bias=bias, **fk)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=self.d_conv, groups=self.d_inner,
            padding=self.d_conv - 1, bias=conv_bias, **fk,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **fk)
        self.dtA_proj = EventRate(self.d_inner, **fk)
        # A and D stay in float32 whatever the factory dtype: they set the recurrence's decay and skip exactly.
        self.A_log = nn.Parameter(torch.empty(self.d_inner, self.d_state, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(self.d_inner, device=device, dtype=torch.float32))
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **fk)

        self._dt_init = (dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
        self._init_ssm_parameters()

    @property
    def backend(self) -> str:
        """The kernels' backend (:mod:`evmamba.kernels.backends`): ``"auto"`` (the fastest that serves the
        tensors) with ``use_fast_path``, else ``"reference"``."""
        return "auto" if self.use_fast_path else "reference"

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def _init_ssm_parameters(self) -> None:
        dt_init, dt_scale, dt_min, dt_max, floor = self._dt_init
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        # dt bias: softplus(bias) log-uniform in [dt_min, dt_max], at least `floor`.
        dt = torch.exp(
            torch.rand(self.d_inner, device=self.D.device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        # S4D-real: A[d, n] = -(n + 1).
        n = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(n).expand(self.d_inner, -1))
        self.D.fill_(1.0)
        self.init_event_rate(self.event_tau_min, self.event_tau_max)
        for p in (self.A_log, self.D, self.dtA_proj.bias):
            p._no_weight_decay = True

    @torch.no_grad()
    def init_event_rate(self, tau_min: float = 1.0, tau_max: float = 1000.0) -> None:
        """Set the event-mode rates so that the channels' slowest time constants are log-spaced in
        ``[tau_min, tau_max]`` (units of ``integration_timesteps``): ``softplus(rate[d]) = 1 / tau[d]``."""
        tau_min = _positive_float(tau_min, "tau_min")
        tau_max = _positive_float(tau_max, "tau_max")
        if tau_min > tau_max:
            raise ValueError(f"tau_min must be <= tau_max; got tau_min={tau_min}, tau_max={tau_max}")
        tau = torch.logspace(math.log10(tau_min), math.log10(tau_max), self.d_inner, dtype=torch.float64)
        r = 1.0 / tau
        self.dtA_proj.bias.copy_((r + torch.log(-torch.expm1(-r))).to(self.dtA_proj.bias))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # lrnnx's Mamba has a `dtA_proj.weight` that its forward never uses; accept and drop it.
        state_dict.pop(prefix + "dtA_proj.weight", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ------------------------------------------------------------------ validation
    def _check_hidden(self, x: Any, name: str, seq_len_one: bool = False) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B, L, {self.d_model}); got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            want = f"(B, 1, {self.d_model})" if seq_len_one else f"(B, L, {self.d_model})"
            raise ValueError(f"{name} must have shape {want}; got {tuple(x.shape)}")
        if seq_len_one and x.shape[1] != 1:
            raise ValueError(f"{name} must have shape (B, 1, {self.d_model}) in step(); got {tuple(x.shape)}")
        if x.dtype != self.in_proj.weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"{name} has dtype {x.dtype} but the layer's parameters are {self.in_proj.weight.dtype}; "
                "convert the input or run under torch.autocast"
            )

    @staticmethod
    def _check_timesteps(dt: Any, batch: int, seqlen: int | None) -> torch.Tensor:
        name = "integration_timesteps"
        if not isinstance(dt, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(dt).__name__}")
        if not dt.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (time steps, e.g. in ms); got dtype {dt.dtype}")
        if seqlen is None:  # step(): (B, 1) or (B,)
            if dt.dim() == 2 and dt.shape[1] == 1:
                dt = dt[:, 0]
            if dt.dim() != 1 or dt.shape[0] != batch:
                raise ValueError(f"{name} must have shape ({batch}, 1) or ({batch},) in step(); got {tuple(dt.shape)}")
        elif dt.dim() != 2 or tuple(dt.shape) != (batch, seqlen):
            raise ValueError(f"{name} must have shape (B, L) = ({batch}, {seqlen}); got {tuple(dt.shape)}")
        # Checking values reads them on the host. forward() does it once per sequence; step() does it only for
        # CPU tensors, since on a GPU it would synchronise every token (and cannot run inside a CUDA graph).
        if not (dt.is_cuda and seqlen is None) and not _checked_before(dt):
            # One reduction, so one wait for the GPU: NaN and -inf fail `>= 0`, +inf fails `< inf`.
            if not bool(((dt >= 0) & (dt < math.inf)).all()):
                if not bool(torch.isfinite(dt).all()):
                    raise ValueError(f"{name} must be finite; got NaN or inf")
                raise ValueError(f"{name} must be non-negative (gaps between elements); got min {float(dt.min())}")
            _remember_checked(dt)
        return dt

    def _check_cache(self, cache: Any, batch: int) -> None:
        name = "inference_cache"
        if not isinstance(cache, dict):
            raise TypeError(f"{name} must be a dict from allocate_inference_cache(); got {type(cache).__name__}")
        for key in CACHE_KEYS:
            if key not in cache:
                raise ValueError(f"{name} is missing the key {key!r} (use allocate_inference_cache())")
        shapes = {
            "conv_state": (batch, self.d_inner, self.d_conv),
            "lrnn_state": (batch, self.d_inner, self.d_state),
        }
        for key, shape in shapes.items():
            t = cache[key]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name}[{key!r}] must be a tensor of shape {shape}; got {got}")
        off = cache["seqlen_offset"]
        if isinstance(off, bool) or not isinstance(off, int) or off < 0:
            raise ValueError(f"{name}['seqlen_offset'] must be a non-negative int; got {off!r}")

    @staticmethod
    def _check_lengths(lengths: Any, batch: int, seqlen: int) -> torch.Tensor:
        name = "lengths"
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape ({batch},); got {type(lengths).__name__}")
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor; got dtype {lengths.dtype}")
        if lengths.dim() != 1 or lengths.shape[0] != batch:
            raise ValueError(f"{name} must have shape ({batch},); got {tuple(lengths.shape)}")
        if not (lengths.is_cuda and torch.cuda.is_current_stream_capturing()):
            if bool((lengths < 0).any()) or bool((lengths > seqlen).any()):
                raise ValueError(f"{name} must lie in [0, L={seqlen}]; got {lengths.tolist()}")
        return lengths

    # ------------------------------------------------------------------ forward
    def forward(self, hidden_states, integration_timesteps=None, lengths=None, inference_cache=None):
        """``(B, L, d_model) -> (B, L, d_model)``.

        ``integration_timesteps`` ``(B, L)``: gap of each element to the previous one (event mode when given).
        ``lengths`` ``(B,)``: valid lengths of right-padded sequences; padded positions neither decay nor feed
        the state, so the cache's final state is the state after each sequence's last valid element.
        ``inference_cache``: start from its state and leave the state after the last element in it
        (``seqlen_offset`` advances by ``L``); with ``seqlen_offset > 0`` and ``L == 1`` this is :meth:`step`.
        ``L == 0`` gives an empty ``(B, 0, d_model)`` output and leaves a cache as it was.
        """
        self._check_hidden(hidden_states, "hidden_states")
        batch, seqlen, _ = hidden_states.shape
        # Inside the layer the time steps are `dt`, as everywhere below the layer's public boundary.
        dt = None if integration_timesteps is None else self._check_timesteps(integration_timesteps, batch, seqlen)
        if lengths is not None:
            lengths = self._check_lengths(lengths, batch, seqlen)
        if inference_cache is not None:
            self._check_cache(inference_cache, batch)
            if inference_cache["seqlen_offset"] > 0 and seqlen == 1 and lengths is None:
                out, _ = self._step(hidden_states, inference_cache, dt)
                return out
        if seqlen == 0:  # nothing to do (and the convolution below rejects an empty sequence): the state stays
            return hidden_states.new_zeros((batch, 0, self.d_model))

        xz = self.in_proj(hidden_states)  # (B, L, 2 Di)
        x, z = xz.split(self.d_inner, dim=-1)
        x = x.transpose(1, 2)  # (B, Di, L)
        if inference_cache is None and self._inner_in_one_node(x, dt, lengths):
            from .mamba_inner import mamba_inner  # imports Triton: only where its kernels serve

            y = mamba_inner(xz, self.conv1d.weight[:, 0, :], self.conv1d.bias, self.x_proj.weight,
                            self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D, self.dtA_proj.bias, dt,
                            None if lengths is None else lengths.contiguous(), self.dt_rank, self.d_state,
                            self.discretization)
            return self.out_proj(y)
        conv_state = None if inference_cache is None else inference_cache["conv_state"]
        xc = self._conv_silu(x, conv_state, lengths)  # (B, Di, L)

        x_dbl = self.x_proj(xc.transpose(1, 2))  # (B, L, R + 2N)
        delta, Bt, Ct = scan_inputs(x_dbl, self.dt_proj.weight, self.dt_rank, self.d_state)
        A = -torch.exp(self.A_log.float())
        ssm_state = None if inference_cache is None else inference_cache["lrnn_state"]
        result = selective_scan(
            xc,
            delta,
            A,
            Bt,
            Ct,
            self.D,
            z=z.transpose(1, 2),
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
            dt=dt,
            rate=self.dtA_proj.bias,
            discretization=self.discretization,
            initial_state=ssm_state,
            lengths=lengths,
            return_final_state=ssm_state is not None,
            backend=self.backend,
        )
        if ssm_state is not None:
            y, last = result
            with torch.no_grad():
                ssm_state.copy_(last)
            inference_cache["seqlen_offset"] += seqlen
        else:
            y = result
        return self.out_proj(y.transpose(1, 2))

    def _inner_in_one_node(self, x: torch.Tensor, dt: torch.Tensor | None, lengths: torch.Tensor | None) -> bool:
        """Whether this training forward runs conv, projections and scan as one autograd node
        (:mod:`~evmamba.model.mamba_inner`): with gradients on and wanted (``x`` or a parameter requires one),
        when the Triton kernels serve both the convolution and the scan of ``x`` ``(B, Di, L)`` and the time
        steps and lengths are on ``x``'s device in a dtype they read (otherwise the general path below runs, and
        its kernels' checks speak)."""
        if not (INNER_IN_ONE_NODE and torch.is_grad_enabled()):
            return False
        if not (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False  # nothing to differentiate: the general path saves nothing for a backward
        if conv_backend(x, self.backend, self.d_conv) != "triton" or scan_backend(x, self.backend) != "triton":
            return False
        if dt is not None and (dt.device != x.device or dt.dtype not in KERNEL_DTYPES):
            return False
        return lengths is None or lengths.device == x.device

    def _conv_silu(self, x: torch.Tensor, conv_state: torch.Tensor | None, lengths: torch.Tensor | None):
        """``silu`` of :meth:`_causal_conv`. Without a cache (training, whole sequences) on CUDA activations, one
        Triton kernel computes both (see :func:`~evmamba.kernels.backends.conv_backend`; ``EVMAMBA_TRITON_CONV=0``
        turns it off); otherwise PyTorch's ``conv1d`` and ``silu``."""
        if conv_state is None and conv_backend(x, self.backend, self.d_conv) == "triton":
            from ..kernels.triton_conv import causal_conv1d_silu

            return causal_conv1d_silu(x, self.conv1d.weight, self.conv1d.bias)
        return F.silu(self._causal_conv(x, conv_state, lengths))

    def _causal_conv(self, x: torch.Tensor, conv_state: torch.Tensor | None, lengths: torch.Tensor | None):
        """Depthwise causal convolution of ``x`` ``(B, Di, L)``; with ``conv_state`` continue from (and update) it."""
        L = x.shape[-1]
        if conv_state is None:
            return self.conv1d(x)[..., :L]
        K = self.d_conv
        history = torch.cat([conv_state.to(x.dtype), x], dim=-1)  # (B, Di, K + L)
        out = F.conv1d(history[..., 1:], self.conv1d.weight, self.conv1d.bias, groups=self.d_inner)
        with torch.no_grad():
            if lengths is None:
                conv_state.copy_(history[..., -K:])
            else:
                idx = lengths.to(x.device)[:, None] + torch.arange(K, device=x.device)[None, :]  # (B, K)
                conv_state.copy_(history.gather(-1, idx[:, None, :].expand(-1, self.d_inner, -1)))
        return out

    # ------------------------------------------------------------------ step
    def step(self, x, inference_cache, integration_timesteps=None, **kwargs):
        """One element: ``x`` ``(B, 1, d_model)`` -> ``((B, 1, d_model), inference_cache)``.

        ``integration_timesteps``: ``(B, 1)`` or ``(B,)`` (event mode when given); their values are checked
        for CPU tensors only (a check on the GPU would synchronise every token). The cache is updated in place
        and returned; ``seqlen_offset`` advances by one.

        Extra keyword arguments are accepted and ignored: the layer's specification (``step(..., **kwargs)``,
        shared/spec/mamba-api.md) fixes this signature so that callers written for other Mamba layers, which
        pass more arguments, run unchanged. A misspelt argument is therefore not an error here.
        """
        self._check_hidden(x, "x", seq_len_one=True)
        batch = x.shape[0]
        self._check_cache(inference_cache, batch)
        dt = None if integration_timesteps is None else self._check_timesteps(integration_timesteps, batch, None)
        return self._step(x, inference_cache, dt)

    def _step(self, x, cache, dt):
        """:meth:`step` without the checks: ``dt`` ``(B,)`` or ``(B, 1)`` or None."""
        if dt is not None and dt.dim() == 2:
            dt = dt[:, 0]
        xz = self.in_proj(x[:, 0])  # (B, 2 Di)
        y = mamba_step(
            xz,
            cache["conv_state"],
            cache["lrnn_state"],
            self.conv1d.weight[:, 0, :],
            self.conv1d.bias,
            self.x_proj.weight,
            self.dt_proj.weight,
            self.dt_proj.bias,
            None,
            self.D,
            dt=dt,
            rate=self.dtA_proj.bias,
            discretization=self.discretization,
            A_log=self.A_log,
            backend=self.backend,
        )
        cache["seqlen_offset"] += 1
        return self.out_proj(y).unsqueeze(1), cache

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """``{"conv_state": (B, Di, d_conv), "lrnn_state": (B, Di, N), "seqlen_offset": 0}``, zeros.

        ``dtype``: storage dtype of both tensors (default: the parameters' dtype); the state is accumulated in
        float32 whatever it is. ``max_seqlen`` is accepted for interface consistency and not used.
        """
        batch_size = check_int(batch_size, "batch_size")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be None or a floating-point torch.dtype; got {dtype!r}")
        device = self.out_proj.weight.device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        return {
            "conv_state": torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
            "lrnn_state": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype),
            "seqlen_offset": 0,
        }

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, d_inner={self.d_inner}, "
            f"dt_rank={self.dt_rank}, discretization={self.discretization!r}"
        )


__all__ = ["Mamba", "EventRate", "CACHE_KEYS", "DISCRETIZATIONS"]
