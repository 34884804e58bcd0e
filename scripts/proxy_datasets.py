"""Build two stand-in datasets from the staged N-MNIST subset, to test dataset-only defaults at other scales.

The defaults of a config whose only section is ``dataset`` (``evmamba.training.auto``) were chosen on sensors of
34x34 to 128x128 pixels. Users also bring large sensors (ATIS 304x240 and up, ~100 k events a recording) and
1-D spike sensors (tactile arrays, cochleas); nothing staged here has either. These stand-ins are made from
real recordings (the N-MNIST subset, 1 000 train + 100 test digits) so that a choice of defaults can be
judged on their validation split against the nearest-neighbour baseline:

* ``atis``: every digit drawn 6x larger on a 304x240 sensor (the 34x34 digit covers 204x204 pixels), at a
  random offset of up to 20 pixels from the centre (18 vertically); each event becomes ``--copies`` events
  at random pixels of its 6x6 block, each up to 1 ms later (``--copies 25``: ~100 k events a recording);
* ``spikes``: a 1-D sensor of 68 channels (sensor size ``(68, 1, 2)``): an event at ``(x, y)`` fires
  channel ``x`` and channel ``34 + y`` -- two orthogonal rows of taxels seeing the digit sweep past.

Each is written as ``OUT/<name>/{train,test}/<digit>/<id>.npz`` (sensor size stored), a layout the ``folder``
dataset reads: ``dataset: {name: folder, root: OUT/atis}``. All randomness comes from ``--seed`` and the
recording's number, so the files are the same on every machine. The outputs are derived from the staged data:
keep them out of the repository like the data.

    python scripts/proxy_datasets.py --out /tmp/proxies [--only atis|spikes] [--copies 25]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from evmamba.core.events import EVENT_DTYPE
from evmamba.datasets.local import NMNISTSmall
from evmamba.pipeline.readers.arrays import write_events

ATIS_SIZE = (304, 240, 2)
ATIS_SCALE = 6  # 34 * 6 = 204 pixels: the digit fits the 240-pixel height with room to move
ATIS_MAX_OFFSET = 20  # pixels from the centre
ATIS_JITTER_US = 1000
DIGIT_SIDE = 34
SPIKE_SIZE = (2 * DIGIT_SIDE, 1, 2)


def to_atis(events: np.ndarray, rng: np.random.Generator, copies: int) -> np.ndarray:
    """One N-MNIST recording drawn 6x larger on a 304x240 sensor (module docstring)."""
    span = DIGIT_SIDE * ATIS_SCALE
    # Centred, moved by up to ATIS_MAX_OFFSET pixels (less where the sensor has no room: 18 vertically).
    room_x, room_y = ((ATIS_SIZE[a] - span) // 2 for a in (0, 1))
    ox = room_x + int(rng.integers(-min(room_x, ATIS_MAX_OFFSET), min(room_x, ATIS_MAX_OFFSET) + 1))
    oy = room_y + int(rng.integers(-min(room_y, ATIS_MAX_OFFSET), min(room_y, ATIS_MAX_OFFSET) + 1))
    n = events.shape[0] * copies
    out = np.empty(n, dtype=EVENT_DTYPE)
    src = np.repeat(np.arange(events.shape[0]), copies)
    out["x"] = ox + events["x"][src].astype(np.int64) * ATIS_SCALE + rng.integers(0, ATIS_SCALE, n)
    out["y"] = oy + events["y"][src].astype(np.int64) * ATIS_SCALE + rng.integers(0, ATIS_SCALE, n)
    out["t"] = events["t"][src] + rng.integers(0, ATIS_JITTER_US, n)
    out["p"] = events["p"][src]
    return out[np.argsort(out["t"], kind="stable")]


def to_spikes(events: np.ndarray) -> np.ndarray:
    """One N-MNIST recording seen by two orthogonal rows of 34 channels (module docstring)."""
    n = events.shape[0]
    out = np.empty(2 * n, dtype=EVENT_DTYPE)
    out["x"][:n] = events["x"]
    out["x"][n:] = DIGIT_SIDE + events["y"].astype(np.int64)
    out["y"] = 0
    out["t"][:n] = events["t"]
    out["t"][n:] = events["t"]
    out["p"][:n] = events["p"]
    out["p"][n:] = events["p"]
    return out[np.argsort(out["t"], kind="stable")]


def build(out: Path, only: str | None, copies: int, seed: int) -> None:
    names = [n for n in ("atis", "spikes") if only in (None, n)]
    for split in ("train", "test"):
        data = NMNISTSmall(split)
        for i in tqdm(range(len(data)), desc=f"{split} ({', '.join(names)})", unit="rec"):
            events, label = data[i]
            ident = data.paths[i].stem
            if "atis" in names:
                rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
                write_events(out / "atis" / split / str(label) / f"{ident}.npz", to_atis(events, rng, copies),
                             ATIS_SIZE)
            if "spikes" in names:
                write_events(out / "spikes" / split / str(label) / f"{ident}.npz", to_spikes(events), SPIKE_SIZE)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder to write the stand-ins into")
    ap.add_argument("--only", choices=("atis", "spikes"), default=None, help="build one of them")
    ap.add_argument("--copies", type=int, default=25, help="events per source event on the 304x240 sensor")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.copies < 1:
        ap.error(f"--copies must be at least 1; got {args.copies}")
    if not os.environ.get("EVMAMBA_DATA") and not Path("../shared/data/nmnist_small").is_dir():
        print("warning: EVMAMBA_DATA is not set; the N-MNIST subset is looked for in ../shared/data", file=sys.stderr)
    build(args.out, args.only, args.copies, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
