"""``EventClassifier``: token embedding -> stages of event-mode Mamba blocks with event pooling -> readout -> head.

Shapes and units: ``tokens`` ``(B, L)`` int64 ids in ``[0, vocab_size)``; ``dt`` ``(B, L)`` float32 gap to
the previous token in the binning's time unit (ms by default); ``counts`` ``(B, L)`` events per token;
``lengths`` ``(B,)`` valid tokens per right-padded row; ``surfaces`` ``(B, L, F)`` float32 local surfaces of the
tokens (:mod:`evmamba.pipeline.surfaces`), needed by the ``"surface"`` embedding only (None otherwise). Logits are
``(B, n_classes)``.

Architecture::

    embed(tokens, counts, surfaces) -> n x [h = h + Mamba(norm(h), dt)]  (event pooling after some layers)
                          -> norm -> readout over valid positions -> linear head

Three ways to run the same function, tested to agree (fp32, relative error < 1e-5):

* :meth:`EventClassifier.forward` -- whole right-padded sequences (training);
* :meth:`EventClassifier.forward_chunk` -- the next piece of each stream, carrying the state in an
  inference cache; returns the logits of the prefix seen so far (long streams with bounded memory);
* :meth:`EventClassifier.step` -- one token per stream (the real-time loop); no data-dependent Python
  branching and no host synchronisation, so a CUDA graph can capture it.

After ``k`` tokens, the streaming paths return exactly ``forward`` on the first ``k`` tokens. With pooling that
needs care: ``forward`` on ``k`` tokens ends with a partial window, which the next stage sees as a token. The
cache therefore holds each later stage's state as of its last *complete* window, and every call runs that
stage from a copy of it on the current partial window; when the window completes, the copy is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn as nn

from ..core.checks import check_int, check_number, is_number
from ..kernels.discretization import check_discretization
from ..pipeline.surfaces import SurfaceConfig
from .context import ContextConfig, ContextStage
from .embedding import EMBEDDINGS, TokenEmbedding, check_grid
from .mamba import Mamba
from .pooling import (
    READOUTS,
    add_to_window,
    carry_token,
    pool_windows,
    pool_with_carry,
    readout,
    readout_accumulate,
    readout_commit,
    readout_value,
    window_mean,
)

NORMS = ("rms", "layer")
MODEL_TYPE = "event_mamba"


def _int_arg(value: Any, name: str, minimum: int = 1) -> int:
    return check_int(value, f"EventClassifier: argument '{name}'", minimum)


def _float_arg(value: Any, name: str, minimum: float = 0.0, maximum: float = math.inf, open_max=False) -> float:
    return check_number(value, f"EventClassifier: argument '{name}'", minimum, maximum, open_max=open_max)


def _strides(pool_stride, n_layers: int) -> list[int]:
    """Stride after each layer (1 = no pooling); the last layer is never followed by pooling."""
    if pool_stride is None:
        return [1] * n_layers
    if isinstance(pool_stride, int) and not isinstance(pool_stride, bool):
        s = _int_arg(pool_stride, "pool_stride")
        return [s] * (n_layers - 1) + [1]
    if isinstance(pool_stride, Sequence) and not isinstance(pool_stride, (str, bytes)):
        if len(pool_stride) != n_layers - 1:
            raise ValueError(
                f"EventClassifier: argument 'pool_stride' as a list needs one stride per gap between layers "
                f"({n_layers - 1} for n_layers={n_layers}); got {list(pool_stride)}"
            )
        return [_int_arg(s, "pool_stride[i]") for s in pool_stride] + [1]
    raise TypeError(
        f"EventClassifier: argument 'pool_stride' must be None, an int or a list of ints; got {pool_stride!r}"
    )


@dataclass(frozen=True)
class ClassifierConfig:
    """The architecture of an :class:`EventClassifier`: the keys of a config's ``model`` section
    (``type: event_mamba``), one field each, checked when the object is made (``TypeError`` / ``ValueError``
    naming ``EventClassifier: argument 'KEY'``). The data give the rest (``vocab_size``, ``n_classes``, and
    ``grid`` when the section leaves it out).

    Fields:
        d_model: width of the residual stream.
        n_layers: number of Mamba blocks.
        d_state, d_conv, expand, dt_min, dt_max: passed to each :class:`~evmamba.model.Mamba`.
        discretization: ``"mamba"``, ``"zoh"``, ``"bilinear"`` or ``"dirac"``.
        embedding: ``"table"``, ``"factorised"`` (x, y and polarity tables) or ``"surface"`` (each token's local
            surface through a shared MLP, plus coarse position and polarity rows); the last two need ``grid``
            (:mod:`evmamba.model.embedding`).
        grid: ``(W', H', P)`` token grid, ``W' * H' * P == vocab_size``.
        count_feature: add a learned ``log(count)`` feature to each token's embedding.
        surface: the surfaces the ``"surface"`` embedding reads: a
            :class:`~evmamba.pipeline.surfaces.SurfaceConfig` or a mapping of its keys (``radius``, ``tau_us``,
            ``scales``, ``kind``); defaults when None.
        surface_hidden: hidden width of the surface MLP (0: linear).
        position_cells: coarse position cells along the longer grid axis (``"surface"``).
        context: None (off) or the :class:`~evmamba.model.context.ContextConfig` (or a mapping of its keys
            ``radius``, ``dilation``, ``channels``, ``tau``, ``activation``) of a context stage after the
            embedding: each token adds a learned projection of its latest neighbours' embeddings
            (:mod:`evmamba.model.context`). Needs ``grid``, whatever the embedding.
        pool_stride: ``None`` (no pooling), an int (pool after every layer but the last) or a list of
            ``n_layers - 1`` strides (after layer ``i``; 1 = none). Layers between poolings form a stage.
        input_pool: stride of a pooling of the token embeddings before the first layer (1 = none): a cheap
            way to shorten very long streams, at the price of the order of tokens inside each window.
        readout: ``"mean"``, ``"last"`` or ``"dt_mean"`` (see :mod:`evmamba.model.pooling`).
        norm: ``"rms"`` or ``"layer"``.
        dropout: dropout on the embedding and on each block's output (training only).
        tau_min, tau_max: span of the event-mode decay time constants, in the unit of ``dt``
            (:meth:`Mamba.init_event_rate`).
        event_mode: feed ``dt`` to the layers (event-based decay); False gives standard Mamba.
        dt_eps: added to each token's Δt in the ``dt_mean`` readout's weights.
    """

    d_model: int = 64
    n_layers: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    discretization: str = "zoh"
    embedding: str = "table"
    grid: tuple[int, int, int] | None = None
    count_feature: bool = True
    surface: SurfaceConfig | None = None
    surface_hidden: int = 64
    position_cells: int = 8
    context: ContextConfig | None = None
    pool_stride: int | tuple[int, ...] | None = None
    input_pool: int = 1
    readout: str = "mean"
    norm: str = "rms"
    dropout: float = 0.0
    tau_min: float = 1.0
    tau_max: float = 1000.0
    event_mode: bool = True
    dt_eps: float = 1e-3
    dt_min: float = 0.001
    dt_max: float = 0.1

    def __post_init__(self) -> None:
        put = lambda key, value: object.__setattr__(self, key, value)  # noqa: E731  (frozen: normalise once)
        for key in ("d_model", "n_layers", "d_state", "d_conv"):
            put(key, _int_arg(getattr(self, key), key))
        if not is_number(self.expand) or self.expand <= 0:
            raise ValueError(f"EventClassifier: argument 'expand' must be a positive number; got {self.expand!r}")
        check_discretization(self.discretization, "EventClassifier: argument 'discretization'")
        for key, choices in (("embedding", EMBEDDINGS), ("readout", READOUTS), ("norm", NORMS)):
            if getattr(self, key) not in choices:
                raise ValueError(f"EventClassifier: argument '{key}' must be one of {choices}; "
                                 f"got {getattr(self, key)!r}")
        if isinstance(self.grid, Sequence) and not isinstance(self.grid, (str, bytes)):
            put("grid", tuple(self.grid))  # checked against vocab_size by the embedding
        put("count_feature", bool(self.count_feature))
        if self.embedding != "surface" and self.surface is not None:
            raise ValueError(
                f"EventClassifier: argument 'surface' is for embedding='surface'; got embedding={self.embedding!r}"
            )
        if self.embedding == "surface" and not isinstance(self.surface, SurfaceConfig):
            put("surface", SurfaceConfig.from_dict(self.surface, source="EventClassifier: argument 'surface'"))
        put("surface_hidden", _int_arg(self.surface_hidden, "surface_hidden", 0))
        put("position_cells", _int_arg(self.position_cells, "position_cells"))
        if self.context is not None and not isinstance(self.context, ContextConfig):
            put("context", ContextConfig.from_dict(self.context, source="EventClassifier: argument 'context'"))
        _strides(self.pool_stride, self.n_layers)  # checks it
        if isinstance(self.pool_stride, Sequence) and not isinstance(self.pool_stride, (str, bytes)):
            put("pool_stride", tuple(int(v) for v in self.pool_stride))
        put("input_pool", _int_arg(self.input_pool, "input_pool"))
        put("dropout", _float_arg(self.dropout, "dropout", 0.0, 1.0, open_max=True))
        for low, high in (("tau_min", "tau_max"), ("dt_min", "dt_max")):
            for key in (low, high):
                check_number(getattr(self, key), f"EventClassifier: argument '{key}'", 0.0, open_min=True)
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"EventClassifier: argument '{low}' must be <= '{high}'; "
                                 f"got {getattr(self, low)} > {getattr(self, high)}")
        put("event_mode", bool(self.event_mode))
        put("dt_eps", _float_arg(self.dt_eps, "dt_eps", 0.0))

    @classmethod
    def keys(cls) -> list[str]:
        """The field names, in order."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ClassifierConfig:
        """From a mapping of field names (a ``model`` section without ``type``); an unknown key is a
        ``ValueError`` naming ``model.KEY`` and the known ones."""
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise ValueError(f"config: unknown key(s) {['model.' + k for k in unknown]}; known: {sorted(cls.keys())}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, dicts), as checkpoints store them under ``model_config``."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["grid"] = None if self.grid is None else [int(v) for v in self.grid]
        out["surface"] = None if self.surface is None else self.surface.to_dict()
        out["context"] = None if self.context is None else self.context.to_dict()
        if isinstance(self.pool_stride, tuple):
            out["pool_stride"] = list(self.pool_stride)
        return out


class EventClassifier(nn.Module):
    """Classify token streams with event-mode Mamba layers. See the module docstring for shapes and paths.

    ``EventClassifier(vocab_size, n_classes, config=None, *, use_fast_path=True, **kwargs)``:

    Args:
        vocab_size: number of token ids (:func:`evmamba.pipeline.binning.vocab_size`).
        n_classes: number of classes.
        config: the architecture, a :class:`ClassifierConfig` (or a mapping of its fields); keyword arguments
            named like its fields give or replace single fields (``EventClassifier(V, C, d_model=32)``).
        use_fast_path: let the layers use their fused kernels where available (not part of the architecture).

    :attr:`architecture` is the :class:`ClassifierConfig`; :attr:`config` the plain dict a checkpoint stores
    (``vocab_size``, ``n_classes`` and the architecture's fields), from which the same model is rebuilt.
    """

    #: Constructor arguments that come from the data, not from the config's ``model`` section.
    DATA_ARGS = ("vocab_size", "n_classes")

    def __init__(self, vocab_size: int, n_classes: int, config: ClassifierConfig | Mapping | None = None, *,
                 use_fast_path: bool = True, **kwargs):
        super().__init__()
        if config is None:
            config = ClassifierConfig.from_dict(kwargs)
        elif isinstance(config, Mapping):
            config = ClassifierConfig.from_dict({**config, **kwargs})
        elif isinstance(config, ClassifierConfig):
            config = replace(config, **kwargs) if kwargs else config
        else:
            raise TypeError(f"EventClassifier: argument 'config' must be a ClassifierConfig, a mapping or None; "
                            f"got {type(config).__name__}")
        self.architecture = c = config
        self.vocab_size = _int_arg(vocab_size, "vocab_size")
        self.n_classes = _int_arg(n_classes, "n_classes")
        self.d_model, self.n_layers = c.d_model, c.n_layers
        self.dt_eps = c.dt_eps
        self.readout_kind = c.readout
        self.event_mode = c.event_mode
        self.strides = _strides(c.pool_stride, self.n_layers)
        # Stage k holds the layers between two poolings; stage_strides[k] is the stride after it. An input
        # pooling makes a first stage without layers.
        self.stages: list[list[int]] = [[], []] if c.input_pool > 1 else [[]]
        self.stage_strides: list[int] = [c.input_pool] if c.input_pool > 1 else []
        for i, s in enumerate(self.strides):
            self.stages[-1].append(i)
            if s > 1:
                self.stage_strides.append(s)
                self.stages.append([])

        self.embedding = TokenEmbedding(self.vocab_size, self.d_model, c.embedding, c.grid, c.count_feature,
                                        surface=c.surface, surface_hidden=c.surface_hidden,
                                        position_cells=c.position_cells)
        self.context = None
        if c.context is not None:
            if c.grid is None:
                raise ValueError(
                    "EventClassifier: argument 'context' needs the token grid (W', H', P) to find each token's "
                    "neighbours: give 'grid' (a config's model section takes it from the binning when it leaves it out)"
                )
            self.context = ContextStage(check_grid(c.grid, self.vocab_size, "EventClassifier: argument 'grid'"),
                                        self.d_model, c.context)
        norm_cls = (
            (lambda: nn.RMSNorm(self.d_model, eps=1e-5)) if c.norm == "rms" else (lambda: nn.LayerNorm(self.d_model))
        )
        self.layers = nn.ModuleList(
            Mamba(self.d_model, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand, dt_min=c.dt_min,
                  dt_max=c.dt_max, discretization=c.discretization, layer_idx=i, use_fast_path=use_fast_path)
            for i in range(self.n_layers)
        )
        self.norms = nn.ModuleList(norm_cls() for _ in range(self.n_layers))
        self.final_norm = norm_cls()
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(self.d_model, self.n_classes)
        with torch.no_grad():
            for layer in self.layers:
                layer.init_event_rate(c.tau_min, c.tau_max)
                # Keep the residual stream's growth independent of depth (as GPT-2 and Mamba do).
                layer.out_proj.weight.mul_(1.0 / math.sqrt(self.n_layers))

    @property
    def config(self) -> dict[str, Any]:
        """``vocab_size``, ``n_classes`` and the architecture's fields as plain values (a checkpoint's
        ``model_config``): ``EventClassifier(**config)`` builds the same model."""
        return {"vocab_size": self.vocab_size, "n_classes": self.n_classes, **self.architecture.to_dict()}

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def config_keys(cls) -> list[str]:
        """The keys a ``model`` section of ``type: event_mamba`` may hold: ``type``, ``use_fast_path`` and
        the fields of :class:`ClassifierConfig` (``grid`` comes from the data when the section leaves it out)."""
        return sorted({"type", "use_fast_path"} | set(ClassifierConfig.keys()))

    @staticmethod
    def parse_section(model_cfg: Mapping) -> tuple[ClassifierConfig, bool]:
        """A config's ``model`` section (a mapping or an OmegaConf node) -> ``(ClassifierConfig,
        use_fast_path)``: unknown keys, a ``type`` other than ``event_mamba`` and bad values are errors naming
        the key. The checks of a whole config (:func:`evmamba.training.sections.check_config`) run this."""
        if hasattr(model_cfg, "_metadata"):
            from omegaconf import OmegaConf

            model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
        if not isinstance(model_cfg, Mapping):
            raise TypeError(f"config section 'model' must be a mapping; got {type(model_cfg).__name__}")
        values = dict(model_cfg)
        kind = values.pop("type", MODEL_TYPE)
        if kind != MODEL_TYPE:
            raise ValueError(f"config: key 'model.type' is {kind!r}; EventClassifier builds {MODEL_TYPE!r}")
        use_fast_path = values.pop("use_fast_path", True)
        if not isinstance(use_fast_path, bool):
            raise ValueError(f"config: key 'model.use_fast_path' must be true or false; got {use_fast_path!r}")
        return ClassifierConfig.from_dict(values), use_fast_path

    @classmethod
    def from_config(cls, model_cfg: Mapping, vocab_size: int, n_classes: int, grid=None) -> EventClassifier:
        """Build from a config's ``model`` section (:meth:`parse_section`). ``grid`` is used when the section
        does not give one (and dropped for the ``"table"`` embedding without a context stage, which needs none)."""
        config, use_fast_path = cls.parse_section(model_cfg)
        if config.embedding == "table" and config.context is None:
            config = replace(config, grid=None)
        elif config.grid is None and grid is not None:
            config = replace(config, grid=tuple(grid))
        return cls(vocab_size, n_classes, config, use_fast_path=use_fast_path)

    # ------------------------------------------------------------------------------------------ checks
    @property
    def surface_config(self):
        """The :class:`~evmamba.pipeline.surfaces.SurfaceConfig` of the surfaces this model reads, or None."""
        return self.embedding.surface

    def _check_surfaces(self, surfaces, tokens) -> None:
        """Surfaces are required exactly when the embedding reads them, with shape ``tokens.shape + (F,)``."""
        if not self.embedding.needs_surfaces:
            if surfaces is not None:
                raise ValueError(f"EventClassifier: argument 'surfaces' is only for embedding='surface'; "
                                 f"this model's embedding is {self.embedding.kind!r}")
            return
        want = (*tokens.shape, self.embedding.n_surface)
        if not isinstance(surfaces, torch.Tensor) or tuple(surfaces.shape) != want:
            got = tuple(surfaces.shape) if isinstance(surfaces, torch.Tensor) else type(surfaces).__name__
            raise ValueError(
                f"EventClassifier: argument 'surfaces' must have shape {want} (the tokens' local surfaces, "
                f"evmamba.pipeline.surfaces.token_surfaces); got {got}"
            )
        if not surfaces.is_floating_point():
            raise TypeError(
                f"EventClassifier: argument 'surfaces' must be a floating-point tensor; got {surfaces.dtype}"
            )

    def _check_inputs(self, tokens, dt, counts, lengths, ndim: int, surfaces=None) -> None:
        shape = "(B, L)" if ndim == 2 else "(B,)"
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != ndim:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"EventClassifier: argument 'tokens' must be a tensor of shape {shape}; got {got}")
        if tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise TypeError(f"EventClassifier: argument 'tokens' must be an integer tensor; got {tokens.dtype}")
        if not isinstance(dt, torch.Tensor) or tuple(dt.shape) != tuple(tokens.shape):
            got = tuple(dt.shape) if isinstance(dt, torch.Tensor) else type(dt).__name__
            raise ValueError(
                f"EventClassifier: argument 'dt' must have the shape of tokens {tuple(tokens.shape)}; got {got}"
            )
        if not dt.is_floating_point():
            raise TypeError(f"EventClassifier: argument 'dt' must be a floating-point tensor; got {dt.dtype}")
        if counts is not None and (not isinstance(counts, torch.Tensor) or tuple(counts.shape) != tuple(tokens.shape)):
            got = tuple(counts.shape) if isinstance(counts, torch.Tensor) else type(counts).__name__
            raise ValueError(f"EventClassifier: argument 'counts' must be None or have the shape of tokens; got {got}")
        self._check_surfaces(surfaces, tokens)
        if lengths is not None:
            if not isinstance(lengths, torch.Tensor) or tuple(lengths.shape) != (tokens.shape[0],):
                got = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
                raise ValueError(f"EventClassifier: argument 'lengths' must have shape ({tokens.shape[0]},); got {got}")
            if lengths.is_floating_point() or lengths.dtype == torch.bool:
                raise TypeError(f"EventClassifier: argument 'lengths' must be an integer tensor; got {lengths.dtype}")
        if tokens.is_cuda and torch.cuda.is_current_stream_capturing():
            return  # values cannot be read inside a CUDA graph capture
        if tokens.numel():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"EventClassifier: argument 'tokens' holds id {bad}, outside [0, {self.vocab_size})")
        if lengths is not None and lengths.numel():
            if int(lengths.min()) < 0 or int(lengths.max()) > tokens.shape[-1]:
                raise ValueError(
                    f"EventClassifier: argument 'lengths' must lie in [0, {tokens.shape[-1]}]; got {lengths.tolist()}"
                )

    # ------------------------------------------------------------------------------------------ forward
    def _block(self, i: int, h, dt, lengths=None, cache=None):
        layer_dt = dt if self.event_mode else None
        return h + self.drop(self.layers[i](self.norms[i](h), layer_dt, lengths, inference_cache=cache))

    def features(self, tokens, dt, counts=None, lengths=None, surfaces=None):
        """The last stage's normalised outputs: ``(h (B, L', d), dt' (B, L'), lengths' (B,) or None)``."""
        h = self.embedding(tokens, counts, surfaces)
        if self.context is not None:
            h = self.context(h, tokens, dt, lengths)
        h = self.drop(h)
        dt = dt.float()
        for k, stage in enumerate(self.stages):
            for i in stage:
                h = self._block(i, h, dt, lengths)
            if k < len(self.stage_strides):
                h, dt, lengths = pool_windows(h, dt, lengths, self.stage_strides[k])
        return self.final_norm(h), dt, lengths

    def forward(self, tokens, dt, counts=None, lengths=None, surfaces=None):
        """Logits ``(B, n_classes)`` of whole right-padded sequences; positions ``>= lengths`` are ignored."""
        self._check_inputs(tokens, dt, counts, lengths, 2, surfaces)
        h, dt, lengths = self.features(tokens, dt, counts, lengths, surfaces)
        return self.head(readout(h, dt, lengths, self.readout_kind, self.dt_eps))

    # ------------------------------------------------------------------------------------------ streams
    def allocate_inference_cache(self, batch_size: int, dtype=None, device=None) -> dict:
        """A zeroed cache for ``batch_size`` streams, for :meth:`step` and :meth:`forward_chunk`.

        Keys: ``layers`` (each layer's committed :class:`Mamba` cache), ``scratch`` (working copies for the
        layers after the first pooling, ``None`` for the first stage), ``carry`` (per pooling: ``sum``
        (B, d), ``dt`` (B,), ``n`` (B,) -- the open window), ``readout`` (``sum`` (B, d), ``weight`` (B,),
        ``last`` (B, d)), ``context`` (the context stage's state, :meth:`ContextStage.allocate_state
        <evmamba.model.context.ContextStage.allocate_state>`, or None without one). ``dtype``: storage dtype
        of the layer states (default: the parameters').
        """
        batch_size = _int_arg(batch_size, "batch_size")
        device = self.head.weight.device if device is None else torch.device(device)
        f32 = dict(device=device, dtype=torch.float32)
        first = set(self.stages[0])

        def layer_cache(i):
            c = self.layers[i].allocate_inference_cache(batch_size, 0, dtype=dtype)
            return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in c.items()}

        return {
            "layers": [layer_cache(i) for i in range(self.n_layers)],
            "scratch": [None if i in first else layer_cache(i) for i in range(self.n_layers)],
            "carry": [
                {"sum": torch.zeros(batch_size, self.d_model, **f32), "dt": torch.zeros(batch_size, **f32),
                 "n": torch.zeros(batch_size, **f32)}
                for _ in self.stage_strides
            ],
            "readout": {"sum": torch.zeros(batch_size, self.d_model, **f32), "weight": torch.zeros(batch_size, **f32),
                        "last": torch.zeros(batch_size, self.d_model, **f32)},
            "present": torch.ones(batch_size, dtype=torch.bool, device=device),
            "context": None if self.context is None else self.context.allocate_state(batch_size, device),
        }

    @staticmethod
    def reset_inference_cache(cache: dict) -> None:
        """Zero a cache in place (start new streams without reallocating; CUDA-graph buffers stay valid)."""
        for c in [*cache["layers"], *(s for s in cache["scratch"] if s is not None)]:
            c["conv_state"].zero_()
            c["lrnn_state"].zero_()
            c["seqlen_offset"] = 0
        for d in [*cache["carry"], cache["readout"]]:
            for v in d.values():
                v.zero_()
        if cache.get("context") is not None:
            ContextStage.reset_state(cache["context"])

    def _check_cache(self, cache: Any, batch: int) -> None:
        if not isinstance(cache, dict) or not {"layers", "scratch", "carry", "readout"} <= set(cache):
            raise TypeError("EventClassifier: argument 'cache' must come from allocate_inference_cache()")
        if cache["readout"]["sum"].shape[0] != batch:
            raise ValueError(
                f"EventClassifier: the cache holds {cache['readout']['sum'].shape[0]} streams but the input has {batch}"
            )
        if (self.context is not None) != (cache.get("context") is not None):
            raise TypeError("EventClassifier: argument 'cache' was allocated for a model with"
                            f"{'out' if self.context is not None else ''} a context stage; use this model's "
                            "allocate_inference_cache()")

    def step(self, tokens: torch.Tensor, dt: torch.Tensor, cache: dict, counts: torch.Tensor | None = None,
             surfaces: torch.Tensor | None = None):
        """Advance every stream by one token: ``tokens`` ``(B,)`` int64, ``dt`` ``(B,)``, ``counts`` ``(B,)``
        or None, ``surfaces`` ``(B, F)`` (``"surface"`` embedding) or None -> logits ``(B, n_classes)`` of each
        stream so far. ``cache`` is updated in place.

        Only shapes are checked here (values are the caller's responsibility: no host synchronisation).
        """
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
            raise ValueError("EventClassifier.step: argument 'tokens' must be a (B,) tensor")
        if not isinstance(dt, torch.Tensor) or dt.shape != tokens.shape:
            raise ValueError("EventClassifier.step: argument 'dt' must be a (B,) tensor like tokens")
        self._check_cache(cache, tokens.shape[0])
        self._check_surfaces(surfaces, tokens)
        h = self.embedding(tokens[:, None], None if counts is None else counts[:, None],
                           None if surfaces is None else surfaces[:, None])  # (B, 1, d)
        if self.context is not None:
            h = self.context.step(h[:, 0], tokens, dt, cache["context"])[:, None]
        dt = dt.float()
        commit = None  # None: this stage's input is final (always so for the first stage)
        for k, stage in enumerate(self.stages):
            for i in stage:
                layer, committed = self.layers[i], cache["layers"][i]
                if commit is None:
                    work = committed
                else:  # run from the state of the last complete window, keep the result only if complete
                    work = cache["scratch"][i]
                    work["conv_state"].copy_(committed["conv_state"])
                    work["lrnn_state"].copy_(committed["lrnn_state"])
                    work["seqlen_offset"] = committed["seqlen_offset"]
                # The layer's unchecked step: the inputs were checked above, and its checks read tensor values.
                out, _ = layer._step(self.norms[i](h), work, dt if self.event_mode else None)
                h = h + out
                if commit is not None:
                    for key in ("conv_state", "lrnn_state"):
                        committed[key].copy_(torch.where(commit[:, None, None], work[key], committed[key]))
            if k < len(self.stage_strides):
                final = torch.ones_like(cache["present"]) if commit is None else commit
                pooled, dt, commit = carry_token(cache["carry"][k], h[:, 0], dt, final, self.stage_strides[k])
                h = pooled[:, None]
        y = self.final_norm(h)[:, 0]
        state = cache["readout"]
        feats = readout_value(state, y, dt, cache["present"], self.readout_kind, self.dt_eps)
        readout_commit(state, y, dt, cache["present"] if commit is None else commit, self.readout_kind, self.dt_eps)
        return self.head(feats)

    def forward_chunk(self, tokens, dt, cache: dict, counts=None, lengths=None, surfaces=None):
        """Advance each stream by the next ``lengths[b]`` tokens of a right-padded chunk ``(B, T)`` (all ``T``
        when ``lengths`` is None) -> logits ``(B, n_classes)`` of each stream's prefix so far.

        Equivalent to ``T`` calls of :meth:`step` (a row with ``lengths[b] = 0`` keeps its state and logits),
        with the memory of one chunk: use it to run arbitrarily long streams in pieces.
        """
        self._check_inputs(tokens, dt, counts, lengths, 2, surfaces)
        batch, seqlen = tokens.shape
        self._check_cache(cache, batch)
        if lengths is None:
            lengths = torch.full((batch,), seqlen, dtype=torch.long, device=tokens.device)
        h = self.embedding(tokens, counts, surfaces)
        if self.context is not None:
            h = self.context.forward_chunk(h, tokens, dt, lengths, cache["context"])
        dt = dt.float() * (torch.arange(seqlen, device=dt.device)[None, :] < lengths[:, None])
        pending = None  # the stage input that is not final yet: (x (B, d), dt (B,), present (B,) bool)
        for k, stage in enumerate(self.stages):
            if h.shape[1] and bool((lengths > 0).any()):
                for i in stage:
                    h = self._block(i, h, dt, lengths, cache["layers"][i])
            if pending is not None:
                x, x_dt, present = pending
                x = x[:, None]
                for i in stage:
                    work, committed = cache["scratch"][i], cache["layers"][i]
                    work["conv_state"].copy_(committed["conv_state"])
                    work["lrnn_state"].copy_(committed["lrnn_state"])
                    work["seqlen_offset"] = max(committed["seqlen_offset"], 1)
                    x = self._block(i, x, x_dt[:, None], None, work)
                pending = (x[:, 0], x_dt, present)
            if k < len(self.stage_strides):
                carry = cache["carry"][k]
                h, dt, lengths, (o_sum, o_dt, o_n) = pool_with_carry(
                    h, dt, lengths, carry["sum"], carry["dt"], carry["n"], self.stage_strides[k]
                )
                carry["sum"].copy_(o_sum)
                carry["dt"].copy_(o_dt)
                carry["n"].copy_(o_n)
                if pending is not None:  # the open window plus this stage's pending output
                    x, x_dt, present = pending
                    o_sum, o_dt, o_n = add_to_window(carry, x, x_dt, present.to(o_n.dtype))
                pending = (window_mean(o_sum, o_n), o_dt, o_n > 0)
        state = cache["readout"]
        readout_accumulate(state, self.final_norm(h), dt, lengths, self.readout_kind, self.dt_eps)
        if pending is None:
            y, y_dt, present = state["last"], torch.zeros_like(state["weight"]), torch.zeros_like(cache["present"])
        else:
            y, y_dt, present = self.final_norm(pending[0]), pending[1], pending[2]
        return self.head(readout_value(state, y, y_dt, present, self.readout_kind, self.dt_eps))

    @torch.no_grad()
    def forward_prefixes(self, tokens, dt, ends, counts=None, lengths=None, max_chunk: int | None = None,
                         surfaces=None):
        """Logits after the first ``ends[b, q]`` tokens of each row: ``(B, Q, n_classes)``, in one pass.

        ``ends`` ``(B, Q)`` integer prefix lengths, non-decreasing along ``q`` and at most ``lengths[b]``.
        The rows are consumed in chunks (at most ``max_chunk`` tokens each, if given) through an inference
        cache, so memory does not grow with the stream length. Used for online-accuracy curves.
        """
        self._check_inputs(tokens, dt, counts, lengths, 2, surfaces)
        batch, seqlen = tokens.shape
        if lengths is None:
            lengths = torch.full((batch,), seqlen, dtype=torch.long, device=tokens.device)
        if not isinstance(ends, torch.Tensor) or ends.dim() != 2 or ends.shape[0] != batch:
            raise ValueError(f"EventClassifier: argument 'ends' must be a (B={batch}, Q) integer tensor")
        ends = ends.to(device=tokens.device, dtype=torch.long)
        if ends.numel() and (bool((ends.diff(dim=1) < 0).any()) or bool((ends < 0).any())
                             or bool((ends > lengths[:, None]).any())):
            raise ValueError("EventClassifier: argument 'ends' must be non-decreasing and within [0, lengths]")
        if max_chunk is not None:
            max_chunk = _int_arg(max_chunk, "max_chunk")
        cache = self.allocate_inference_cache(batch, device=tokens.device)
        pos = torch.zeros(batch, dtype=torch.long, device=tokens.device)
        out = []
        for q in range(ends.shape[1]):
            while True:
                n = ends[:, q] - pos
                if max_chunk is not None:
                    n = n.clamp_max(max_chunk)
                width = int(n.max())
                idx = (pos[:, None] + torch.arange(width, device=tokens.device)[None, :]).clamp_max(max(seqlen - 1, 0))
                take = lambda t, idx=idx: None if t is None else t.gather(1, idx)  # noqa: E731
                surf = (
                    None if surfaces is None else surfaces.gather(1, idx[:, :, None].expand(-1, -1, surfaces.shape[-1]))
                )
                logits = self.forward_chunk(take(tokens), take(dt), cache, take(counts), n, surf)
                pos = pos + n
                if bool((pos == ends[:, q]).all()):
                    break
            out.append(logits)
        return torch.stack(out, dim=1)

    def extra_repr(self) -> str:
        return (f"stages={self.stages}, strides={self.stage_strides}, readout={self.readout_kind!r}, "
                f"event_mode={self.event_mode}")


__all__ = ["ClassifierConfig", "EventClassifier", "MODEL_TYPE", "NORMS", "READOUTS"]
