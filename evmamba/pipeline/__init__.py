"""evmamba.pipeline (layer 3), events in and out: readers and writers of event files, event checks, filters,
augmentations and mixing, binning into tokens with Δt, frames and local surfaces.

Importing this package loads numpy only; the numba kernels are imported (and loaded from numba's cache, or
compiled) on the first call that needs them.
"""

from ..core.events import EVENT_DTYPE, SensorSize, check_sensor_size, empty_events, make_events
from .augment import (
    AugmentConfig,
    add_noise,
    affine_events,
    augment_events,
    drop_box,
    drop_events,
    drop_time_window,
    flip_horizontal,
    flip_polarity,
    flip_vertical,
    random_affine,
    random_drop_area,
    random_drop_time,
    random_time_crop,
    random_time_stretch,
    random_translate,
    rotate_events,
    scale_events,
    spatial_jitter,
    time_stretch,
)
from .binning import BinningConfig, StreamingBinner, TokenSequence, bin_events, token_id, vocab_size
from .events import repair_events, to_event_array, validate_events
from .filters import crop_count, crop_time, denoise, refractory
from .frames import downsample, frame_slices, to_frames
from .mixing import mix_events, soft_label

__all__ = [
    "EVENT_DTYPE",
    "AugmentConfig",
    "BinningConfig",
    "SensorSize",
    "StreamingBinner",
    "TokenSequence",
    "add_noise",
    "affine_events",
    "augment_events",
    "bin_events",
    "check_sensor_size",
    "crop_count",
    "crop_time",
    "denoise",
    "downsample",
    "drop_box",
    "drop_events",
    "drop_time_window",
    "empty_events",
    "flip_horizontal",
    "flip_vertical",
    "flip_polarity",
    "frame_slices",
    "make_events",
    "mix_events",
    "random_affine",
    "random_drop_area",
    "random_drop_time",
    "random_time_crop",
    "random_time_stretch",
    "random_translate",
    "refractory",
    "repair_events",
    "rotate_events",
    "scale_events",
    "soft_label",
    "spatial_jitter",
    "time_stretch",
    "to_event_array",
    "to_frames",
    "token_id",
    "validate_events",
    "vocab_size",
]
