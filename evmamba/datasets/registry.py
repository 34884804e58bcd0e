"""Datasets by name, for configs: ``build_dataset(cfg.dataset, split)``.

A dataset section has a ``name`` (one of :data:`DATASET_NAMES`), an optional ``root`` (``null``: the
dataset's default folder) and the dataset's own options, passed as keyword arguments, e.g.::

    dataset:
      name: poker_dvs
      root: null
      n_folds: 5
      fold: 2
      max_samples: 200   # optional, for any dataset: 200 samples of each split, spread over it

:func:`build_dataset` is the only function that turns such a section into a dataset. Each dataset class is
imported only when it is built, so that naming one does not import the others' dependencies (tonic takes
seconds to import).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping

from .base import EventDataset

# name -> (module, class); every class takes ``split`` as a keyword.
_DATASETS: dict[str, tuple[str, str]] = {
    "nmnist_small": ("evmamba.datasets.local", "NMNISTSmall"),
    "poker_dvs": ("evmamba.datasets.local", "PokerDVS"),
    "dvsgesture_samples": ("evmamba.datasets.local", "DVSGestureSamples"),
    "folder": ("evmamba.datasets.folder", "FolderDataset"),
    "synthetic": ("evmamba.datasets.synthetic", "SyntheticShapes"),
    "dvsgesture": ("evmamba.datasets.tonic_datasets", "TonicDVSGesture"),
    "nmnist": ("evmamba.datasets.tonic_datasets", "TonicNMNIST"),
    "shd": ("evmamba.datasets.tonic_datasets", "TonicSHD"),
    "ssc": ("evmamba.datasets.tonic_datasets", "TonicSSC"),
    "pokerdvs_tonic": ("evmamba.datasets.tonic_datasets", "TonicPokerDVS"),
    "cifar10dvs": ("evmamba.datasets.tonic_datasets", "TonicCIFAR10DVS"),
    "ncaltech101": ("evmamba.datasets.tonic_datasets", "TonicNCaltech101"),
}
DATASET_NAMES = tuple(_DATASETS)


def dataset_class(name: str) -> type:
    """The class registered under ``name``; ``ValueError`` listing the names for an unknown one."""
    if not isinstance(name, str) or name not in _DATASETS:
        raise ValueError(f"config: key 'dataset.name' is {name!r}; known datasets: {', '.join(DATASET_NAMES)}")
    module, cls = _DATASETS[name]
    return getattr(importlib.import_module(module), cls)


#: Keys of a dataset section that the builder itself understands, for every dataset: key -> meaning.
BUILDER_KEYS: dict[str, str] = {
    "name": "the dataset's registered name",
    "max_samples": "keep this many samples of each split, spread over it (SpreadSubset), for quick runs",
}


def _plain(cfg_dataset) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        DictConfig = ()
    if DictConfig and isinstance(cfg_dataset, DictConfig):
        return OmegaConf.to_container(cfg_dataset, resolve=True)
    if isinstance(cfg_dataset, Mapping):
        return dict(cfg_dataset)
    raise TypeError(f"config: 'dataset' must be a mapping with a 'name' key; got {type(cfg_dataset).__name__}")


def dataset_keys(name: str) -> list[str]:
    """Every key a ``dataset`` section with this ``name`` may hold: the builder's (:data:`BUILDER_KEYS`) and
    the dataset class's keyword arguments (its signature; ``split`` is chosen by the command)."""
    params = inspect.signature(dataset_class(name)).parameters
    return sorted(set(BUILDER_KEYS) | {k for k, p in params.items() if k != "split" and p.kind is not p.VAR_KEYWORD})


def check_dataset_section(cfg_dataset) -> dict:
    """Check a ``dataset`` section without building the dataset: a known ``name`` and only keys that
    :func:`build_dataset` or the dataset class take. Returns the section as a plain dict; raises
    ``ValueError`` naming the unknown key(s) and listing the valid ones."""
    options = _plain(cfg_dataset)
    if "name" not in options:
        raise ValueError(f"config: the dataset section has no 'name'; known datasets: {', '.join(DATASET_NAMES)}")
    name = options["name"]
    if "split" in options:
        raise ValueError("config: key 'dataset.split' is not an option; the split is chosen by the command")
    params = inspect.signature(dataset_class(name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return options
    valid = dataset_keys(name)
    # "root: null" means "the default folder", also for datasets that have none (as in _construct).
    unknown = sorted(k for k in options if k not in valid and not (k == "root" and options[k] is None))
    if unknown:
        raise ValueError(
            f"config: dataset {name!r} has no option(s) {unknown} "
            f"(key(s) {['dataset.' + k for k in unknown]}); its options are {valid}"
        )
    return options


def build_dataset(cfg_dataset, split: str, make_dataset=None) -> EventDataset:
    """Build the dataset a config section describes, for ``split`` (e.g. ``"train"``, ``"test"``).

    This is the one place where a ``dataset`` section becomes a dataset: training (token caches, the
    augmentation path, frame models), evaluation and ``evmamba stream --source sample:`` all call it.

    ``cfg_dataset`` is a ``dict`` or ``DictConfig`` with ``name``, optional ``root``, the class's options
    (lists become tuples where a class expects a sensor size) and the builder's own keys
    (:data:`BUILDER_KEYS`): ``max_samples: N`` keeps N samples of the split spread over it
    (:class:`~evmamba.datasets.subset.SpreadSubset`), always the same ones. ``make_dataset(section, split)``
    replaces the registry's constructor (for tests and custom datasets; it gets the section without the
    builder's keys but with ``name``). Raises ``ValueError`` for an unknown name (listing the known ones),
    an option the dataset does not take (listing the ones it takes) or a ``split`` key inside the section,
    and passes on the dataset's own errors.
    """
    options = _plain(cfg_dataset)
    if not isinstance(split, str):
        raise TypeError(f"split must be a string; got {type(split).__name__}")
    limit = options.pop("max_samples", None)
    if make_dataset is not None:
        dataset = make_dataset(options, split)
    else:
        dataset = _construct(options, split)
    if limit is not None:
        from .subset import SpreadSubset

        dataset = SpreadSubset(dataset, limit, source="config: key 'dataset.max_samples'")
    return dataset


def _construct(options: dict, split: str) -> EventDataset:
    """The registered class of ``options["name"]`` built with the remaining options."""
    if "name" not in options:
        raise ValueError(f"config: the dataset section has no 'name'; known datasets: {', '.join(DATASET_NAMES)}")
    name = options.pop("name")
    cls = dataset_class(name)
    if "split" in options:
        raise ValueError(
            f"config: key 'dataset.split' is not an option; the split is chosen by the command ({split!r})"
        )
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if options.get("root", 0) is None and "root" not in params:
        options.pop("root")  # "root: null" means "the default", also for datasets without a folder
    unknown = sorted(k for k in options if k not in params) if not takes_any else []
    if unknown:
        raise ValueError(f"config: dataset {name!r} has no option(s) {unknown}; its options are {dataset_keys(name)}")
    if "root" in params and params["root"].default is inspect.Parameter.empty and options.get("root") is None:
        raise ValueError(f"config: dataset {name!r} needs 'dataset.root' (the folder that holds the recordings)")
    for key, value in options.items():
        if isinstance(value, list):
            options[key] = tuple(value)
    return cls(split=split, **options)
