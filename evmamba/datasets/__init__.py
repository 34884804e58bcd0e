"""evmamba.datasets (layer 5): datasets that yield ``(events, label)`` pairs, token caches and loaders.

* readers (re-exported from :mod:`evmamba.pipeline.readers`, their home) -- :func:`read_events` (any
  supported file, chosen by extension and header), one ``read_*`` function per format, :func:`write_events`
  (``.npy``/``.npz``/HDF5);
* :class:`EventDataset` -- the interface (``len``, ``ds[i] -> (events, label)``, ``sensor_size``,
  ``classes``, ``source(i)``, ``name``);
* the staged real recordings -- :class:`NMNISTSmall`, :class:`PokerDVS`, :class:`DVSGestureSamples`;
* your own files -- :class:`FolderDataset`;
* tonic's datasets -- :class:`TonicDVSGesture`, :class:`TonicNMNIST`, :class:`TonicSHD`, :class:`TonicSSC`,
  :class:`TonicPokerDVS`, :class:`TonicCIFAR10DVS`, :class:`TonicNCaltech101`;
* :func:`build_dataset` -- any of them from a config section;
* :mod:`.cache` -- HDF5 token caches (:class:`TokenCache`); :mod:`.wrappers` -- datasets over datasets
  (:class:`BinnedDataset`, :class:`EventMixDataset`, :class:`FrameDataset`, :class:`WithSurfaces`,
  :class:`IndexedSubset`, :class:`TokenCrop`); :mod:`.batching` -- :func:`collate`, :func:`collate_frames`,
  :class:`LengthBucketSampler`, :class:`ShardedBatches`.

Names are imported on first use, so ``import evmamba.datasets`` stays cheap.
"""

from __future__ import annotations

from ..core.lazy import lazy_getattr

_EXPORTS = {
    "data_root": "evmamba.datasets.paths",
    "require_data": "evmamba.datasets.paths",
    "read_events": "evmamba.pipeline.readers",
    "write_events": "evmamba.pipeline.readers",
    "detect_format": "evmamba.pipeline.readers",
    "FORMATS": "evmamba.pipeline.readers",
    "EXTENSIONS": "evmamba.pipeline.readers",
    "read_nmnist_bin": "evmamba.pipeline.readers",
    "read_aedat2_dvs128": "evmamba.pipeline.readers",
    "read_aedat4": "evmamba.pipeline.readers",
    "read_prophesee_evt2": "evmamba.pipeline.readers",
    "read_prophesee_evt3": "evmamba.pipeline.readers",
    "read_prophesee_dat": "evmamba.pipeline.readers",
    "read_kaer_td": "evmamba.pipeline.readers",
    "read_numpy": "evmamba.pipeline.readers",
    "read_hdf5_events": "evmamba.pipeline.readers",
    "TokenCache": "evmamba.datasets.cache",
    "BinnedDataset": "evmamba.datasets.wrappers",
    "EventMixDataset": "evmamba.datasets.wrappers",
    "FrameDataset": "evmamba.datasets.wrappers",
    "WithSurfaces": "evmamba.datasets.wrappers",
    "IndexedSubset": "evmamba.datasets.wrappers",
    "TokenCrop": "evmamba.datasets.wrappers",
    "collate": "evmamba.datasets.batching",
    "collate_frames": "evmamba.datasets.batching",
    "LengthBucketSampler": "evmamba.datasets.batching",
    "ShardedBatches": "evmamba.datasets.batching",
    "TokenDataset": "evmamba.datasets.batching",
    "EventDataset": "evmamba.datasets.base",
    "EventFileDataset": "evmamba.datasets.base",
    "NMNISTSmall": "evmamba.datasets.local",
    "PokerDVS": "evmamba.datasets.local",
    "DVSGestureSamples": "evmamba.datasets.local",
    "FolderDataset": "evmamba.datasets.folder",
    "DatasetFilesMissingError": "evmamba.datasets.tonic_datasets",
    "TonicDVSGesture": "evmamba.datasets.tonic_datasets",
    "TonicNMNIST": "evmamba.datasets.tonic_datasets",
    "TonicSHD": "evmamba.datasets.tonic_datasets",
    "TonicSSC": "evmamba.datasets.tonic_datasets",
    "TonicPokerDVS": "evmamba.datasets.tonic_datasets",
    "TonicCIFAR10DVS": "evmamba.datasets.tonic_datasets",
    "TonicNCaltech101": "evmamba.datasets.tonic_datasets",
    "build_dataset": "evmamba.datasets.registry",
    "DATASET_NAMES": "evmamba.datasets.registry",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
