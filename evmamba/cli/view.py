"""evmamba view: render a recording as event frames (GIF, MP4 or a PNG grid), with the classifier's
probabilities over time beside them when a checkpoint is given.

Frames accumulate the events of --window-ms (default: about a fortieth of the recording, rounded to 1, 2
or 5 x 10^k µs) every --step-ms (default: the window); pixels with more ON events are drawn in the ON
colour, more OFF events in the OFF colour. Spike data (sensor height 1, x = channel) become raster plots.
A GIF or MP4 shows each frame for step / --speed of real time; a PNG is a grid of --tiles frames spread
over the recording. With --checkpoint, the recording runs through the checkpoint's binning and the stream
loop's compiled step, and the panel shows what the loop knows at the end of each frame's window.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

DESCRIPTION = __doc__.split("\n\n", 1)[1]
EXAMPLE = ("evmamba view ../shared/data/dvsgesture_slayer_bs2/4.bs2 --checkpoint checkpoints/dvsgesture.pt "
           "--out gesture.gif")

FRAMES_WANTED = 40  # frames the default window aims at (camera data)
RASTER_FRAMES_WANTED = 8  # raster plots show more time per frame


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="an event file in any supported format")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="clip.gif, clip.mp4 or frames.png (default: FILE's name with .gif, here)")
    parser.add_argument("--checkpoint", default=None, metavar="CKPT",
                        help="a .pt checkpoint or run folder: add the class-probability panel")
    parser.add_argument("--window-ms", type=float, default=None, help="events accumulated per frame, ms")
    parser.add_argument("--step-ms", type=float, default=None, help="time between frames, ms (default: the window)")
    parser.add_argument(
        "--start-ms", type=float, default=0.0, help="first frame starts this long after the first event"
    )
    parser.add_argument("--duration-ms", type=float, default=None, help="render only this much of the recording")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="playback speed of GIF/MP4: 1 = real time, 0.1 = ten times slower (default 1)")
    parser.add_argument("--max-frames", type=int, default=300, help="most frames in a GIF or MP4 (default 300)")
    parser.add_argument("--tiles", type=int, default=8, help="frames in a PNG grid (default 8)")
    parser.add_argument("--columns", type=int, default=None,
                        help="tiles per row of a PNG grid (default 4, or 2 with a checkpoint)")
    parser.add_argument(
        "--scale",
        default=None,
        help="image pixels per sensor pixel: 2, 4 ... or 0.5, 0.25 ... (default: fit to about 256-640 px)",
    )
    parser.add_argument(
        "--raster-width", type=int, default=480, help="raster plots: pixels across the window (default 480)"
    )
    parser.add_argument("--flip-y", action="store_true", help="draw y = 0 at the bottom (as jAER shows a DVS128)")
    parser.add_argument("--on-color", default=None, metavar="HEX", help="ON events (default #ffc400)")
    parser.add_argument("--off-color", default=None, metavar="HEX", help="OFF events (default #288cff)")
    parser.add_argument("--background", default=None, metavar="HEX", help="background (default #121212)")
    parser.add_argument("--sort", action="store_true", help="sort the events by time if the file's go backwards")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        return view(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"evmamba view: {exc}", file=sys.stderr)
        return 1


def nice_us(x: float) -> int:
    """The largest of 1, 2, 5 x 10^k µs not above ``x`` (at least 1 µs)."""
    if not x >= 1:
        return 1
    e = 10 ** int(math.floor(math.log10(x)))
    return max(m * e for m in (1, 2, 5) if m * e <= x)


def _ms_to_us(value: float | None, option: str) -> int | None:
    if value is None:
        return None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--{option}: must be a non-negative number of ms; got {value}")
    return int(round(value * 1000))


def _format_time(us: int, total_us: int) -> str:
    return f"{us / 1e6:.3f} s" if total_us >= 2_000_000 else f"{us / 1000:.1f} ms"


def view(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..pipeline.readers import read_events
    from ..render import images as I
    from ..render import output as O
    from ..render import panel as P

    src = Path(args.file)
    out = Path(args.out) if args.out else Path(src.name).with_suffix(".gif")
    kind = O.output_kind(out)
    if kind == "mp4":
        O.find_ffmpeg()  # fail before the work, not after it
    if not (math.isfinite(args.speed) and args.speed > 0):
        raise ValueError(f"--speed: must be a positive factor; got {args.speed}")
    if args.tiles < 1:
        raise ValueError(f"--tiles: must be a positive int; got {args.tiles}")
    if args.columns is not None and args.columns < 1:
        raise ValueError(f"--columns: must be a positive int; got {args.columns}")
    defaults = I.Colors()
    colors = I.Colors(
        on=I.parse_color(args.on_color, "--on-color") if args.on_color else defaults.on,
        off=I.parse_color(args.off_color, "--off-color") if args.off_color else defaults.off,
        background=I.parse_color(args.background, "--background") if args.background else defaults.background,
    )
    progress = not args.no_progress
    policy = "sort" if args.sort else "error"

    model = None
    if args.checkpoint:
        from ..streaming.loading import load_stream_model

        model = load_stream_model(args.checkpoint)
        try:
            events, sensor = read_events(src, model.sensor_size, on_unsorted=policy)
        except ValueError as exc:
            raise ValueError(f"{exc} (the checkpoint {model.path} expects the sensor {model.sensor_size})") from None
        sensor = tuple(model.sensor_size)
    else:
        events, sensor = read_events(src, on_unsorted=policy)
    t = events["t"]
    t_first, t_last = int(t[0]), int(t[-1])
    span = t_last - t_first
    spike = I.is_spike_data(sensor)

    window = _ms_to_us(args.window_ms, "window-ms")
    if window is None:
        window = nice_us(span / (RASTER_FRAMES_WANTED if spike else FRAMES_WANTED))
    plan = I.plan_frames(t_first, t_last, window, _ms_to_us(args.step_ms, "step-ms"),
                         start_us=_ms_to_us(args.start_ms, "start-ms") or 0,
                         duration_us=_ms_to_us(args.duration_ms, "duration-ms"),
                         max_frames=None if kind == "png" else args.max_frames)
    step = int(plan.starts[1] - plan.starts[0]) if len(plan) > 1 else window
    chosen = np.arange(len(plan))
    if kind == "png" and len(plan) > args.tiles:
        chosen = np.unique(np.linspace(0, len(plan) - 1, args.tiles).round().astype(np.int64))

    if args.scale is not None:
        scale = I.Scale.parse(args.scale)
    else:
        scale = I.Scale.auto(int(sensor[0]) if spike else max(int(sensor[0]), int(sensor[1])),
                             small=256 if not spike else 200, large=800 if not spike else 400,
                             target=640 if not spike else 350)
    if spike:
        fh, fw = I.raster_shape(sensor, scale, args.raster_width)
    else:
        fh, fw = I.frame_shape(sensor, scale)

    panel = None
    lot = None
    if model is not None:
        from ..streaming.probabilities import logits_over_time

        stop = int(plan.stops[chosen[-1]])
        seen = events[: int(np.searchsorted(t, stop, side="left"))]
        lot = logits_over_time(model, seen, source=str(src), progress=progress)
        axis = min(stop, t_last + 1) - t_first
        panel = P.ProbabilityPanel(lot.t_us, lot.probabilities(), lot.classes, axis,
                                   height=max(fh + P.CAPTION_HEIGHT, P.PANEL_MIN_HEIGHT))

    lo = np.searchsorted(t, plan.starts[chosen], side="left")
    hi = np.searchsorted(t, plan.stops[chosen], side="left")

    def pictures():
        for j, i in enumerate(chosen):
            a, b = int(plan.starts[i]), int(plan.stops[i])
            ev = events[lo[j]:hi[j]]
            if spike:
                img = I.raster_frame(ev, sensor, a, b, args.raster_width, scale, colors, source=str(src))
            else:
                img = I.event_frame(ev, sensor, scale, colors, flip_y=args.flip_y, source=str(src))
            text = f"{_format_time(a - t_first, span)} - {_format_time(b - t_first, span)}"
            side = panel.render(b - t_first) if panel is not None else None
            yield P.compose(img, text, side, colors.background)

    frames = tqdm(pictures(), total=len(chosen), desc="view", unit="frame", disable=not progress, leave=False)
    frame_ms = step / 1000.0 / args.speed
    note = ""
    if kind == "gif":
        exact = [colors.on, colors.off, colors.both, colors.background, P.PANEL_BG, P.TEXT, P.DIM, P.AXIS,
                 P.OTHER, *P.LINE_COLORS]
        n = O.write_gif(frames, out, frame_ms, exact)
        shown_ms = max(O.MIN_GIF_FRAME_MS, int(round(frame_ms / 10.0)) * 10)
        if shown_ms > frame_ms * 1.05:
            note = (f"; GIF frames last at least {O.MIN_GIF_FRAME_MS} ms, so playback is "
                    f"{shown_ms / frame_ms:.3g}x slower than asked (a larger --step-ms keeps it)")
    elif kind == "mp4":
        n = O.write_mp4(frames, out, fps=1000.0 / frame_ms)
    else:
        pics = list(frames)
        columns = args.columns or (2 if model is not None else 4)
        O.write_png(P.grid(pics, columns), out)
        n = len(pics)
    what = "raster plots" if spike else "frames"
    print(f"wrote {out}: {n} {what} of {fh}x{fw} px (scale {scale}), windows of {window / 1000:g} ms "
          f"every {step / 1000:g} ms" + (f", {frame_ms:g} ms each" if kind != "png" else "") + note)
    if plan.total > len(plan):
        print(f"note: the recording has {plan.total} frames; the first {len(plan)} were rendered (--max-frames; "
              "or choose a larger --window-ms/--step-ms, or --start-ms/--duration-ms)", file=sys.stderr)
    if lot is not None and lot.logits.shape[0]:
        p = lot.probabilities()[-1]
        c = int(p.argmax())
        print(f"decision at {_format_time(int(lot.t_us[-1]), span)}: {lot.classes[c]} ({p[c]:.2f}) after "
              f"{int(lot.tokens[-1]):,} tokens, {int(lot.events[-1]):,} events")
    return 0


__all__ = ["EXAMPLE", "configure", "nice_us", "run", "view"]
