"""evmamba.pipeline: event arrays -> filters and augmentations -> tokens with Δt -> padded batches.

Importing this package loads numpy only; the numba kernels are imported (and loaded from numba's cache, or
compiled) on the first call that needs them.
"""

from .augment import (
    AugmentConfig,
    augment_events,
    drop_events,
    flip_horizontal,
    random_time_crop,
    random_translate,
    spatial_jitter,
)
from .batching import BinnedDataset, LengthBucketSampler, TokenDataset, collate
from .binning import BinningConfig, StreamingBinner, TokenSequence, bin_events, token_id, vocab_size
from .events import (
    EVENT_DTYPE,
    SensorSize,
    check_sensor_size,
    empty_events,
    make_events,
    repair_events,
    to_event_array,
    validate_events,
)
from .filters import crop_count, crop_time, denoise, refractory
from .frames import downsample, frame_slices, to_frames

__all__ = [
    "EVENT_DTYPE",
    "AugmentConfig",
    "BinnedDataset",
    "BinningConfig",
    "LengthBucketSampler",
    "SensorSize",
    "StreamingBinner",
    "TokenDataset",
    "TokenSequence",
    "augment_events",
    "bin_events",
    "check_sensor_size",
    "collate",
    "crop_count",
    "crop_time",
    "denoise",
    "downsample",
    "drop_events",
    "empty_events",
    "flip_horizontal",
    "frame_slices",
    "make_events",
    "random_time_crop",
    "random_translate",
    "refractory",
    "repair_events",
    "spatial_jitter",
    "to_event_array",
    "to_frames",
    "token_id",
    "validate_events",
    "vocab_size",
]
