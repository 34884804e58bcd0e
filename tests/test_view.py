"""``evmamba view`` on real recordings of every format: picture sizes, and ON / OFF colours exactly where the
events of each window are (the expected pixels are worked out here from the events themselves)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from evmamba import cli
from evmamba.core.events import make_events
from evmamba.datasets.paths import require_data
from evmamba.pipeline.readers import read_events, write_events
from evmamba.render.images import Colors
from evmamba.render.panel import CAPTION_HEIGHT, GAP, PANEL_MIN_HEIGHT, PANEL_WIDTH

COLORS = Colors()
CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "dvsgesture.pt"

# (path under the data folder, --scale, sensor (W, H) the reader reports): one staged recording per format.
RECORDINGS = [
    (("format_samples", "tonic_test_data", "sample_nmnist.bin"), "4", (34, 34)),
    (("format_samples", "dvs128_aedat2_recordings", "alex_walking_again.aedat"), "1", (128, 128)),
    (("format_samples", "aestream_example", "davis.aedat4"), "1", (346, 260)),
    (("format_samples", "tonic_test_data", "sample_ncars.dat"), "2", (78, 42)),
    (("format_samples", "expelliarmus_sample_files", "evt2_sample.raw"), "0.5", (640, 480)),
    (("format_samples", "expelliarmus_sample_files", "evt3_test_pedestrians.raw"), "0.25", (1280, 720)),
    (("poker_dvs", "Cards", "usable", "pips", "cl_60_td.dat"), "4", (31, 32)),
]


def view(*args) -> int:
    return cli.main(["view", *map(str, args), "--no-progress"])


def three_windows(events) -> int:
    """A window (µs) that cuts the recording into exactly three frames."""
    span = int(events["t"][-1] - events["t"][0])
    return span // 3 + 1


def expected_colors(events, sensor_wh, zoom: int, reduce: int) -> np.ndarray:
    """The picture the specification asks for: per (reduced) pixel, the ON colour where ON events are the
    majority, OFF where OFF events are, the mean on a tie, the background where there is no event."""
    w, h = sensor_wh
    rw, rh = -(-w // reduce), -(-h // reduce)
    on = np.zeros((rh, rw), np.int64)
    off = np.zeros((rh, rw), np.int64)
    ys, xs = events["y"].astype(np.int64) // reduce, events["x"].astype(np.int64) // reduce
    np.add.at(on, (ys[events["p"] == 1], xs[events["p"] == 1]), 1)
    np.add.at(off, (ys[events["p"] == 0], xs[events["p"] == 0]), 1)
    img = np.zeros((rh, rw, 3), np.uint8)
    img[:, :] = COLORS.background
    img[on > off] = COLORS.on
    img[off > on] = COLORS.off
    img[(on == off) & (on > 0)] = COLORS.both
    return np.kron(img, np.ones((zoom, zoom, 1), np.uint8))


def scale_parts(scale: str) -> tuple[int, int]:
    f = float(scale)
    return (int(f), 1) if f >= 1 else (1, round(1 / f))


def check_frame(picture: np.ndarray, events, sensor_wh, scale: str, what: str) -> None:
    zoom, reduce = scale_parts(scale)
    want = expected_colors(events, sensor_wh, zoom, reduce)
    got = picture[: want.shape[0], : want.shape[1]]
    on_px = (want == COLORS.on).all(-1)
    off_px = (want == COLORS.off).all(-1)
    empty = (want == COLORS.background).all(-1)
    assert on_px.any() and off_px.any(), f"{what}: the window should hold both polarities"
    assert (got[on_px] == COLORS.on).all(), f"{what}: ON pixels"
    assert (got[off_px] == COLORS.off).all(), f"{what}: OFF pixels"
    assert (got[empty] == COLORS.background).all(), f"{what}: pixels without events"
    assert np.array_equal(got, want), what


@pytest.mark.parametrize("parts, scale, sensor_wh", RECORDINGS, ids=[r[0][-1] for r in RECORDINGS])
def test_every_format_renders_to_gif_and_png_with_events_where_they_are(tmp_path, parts, scale, sensor_wh):
    path = require_data(*parts)
    events, size = read_events(path)
    assert size[:2] == sensor_wh
    window = three_windows(events)
    zoom, reduce = scale_parts(scale)
    fw, fh = -(-sensor_wh[0] // reduce) * zoom, -(-sensor_wh[1] // reduce) * zoom
    t0 = int(events["t"][0])
    windows = [events[(events["t"] >= t0 + k * window) & (events["t"] < t0 + (k + 1) * window)] for k in range(3)]

    gif = tmp_path / "clip.gif"
    assert view(path, "--out", gif, "--window-ms", window / 1000, "--scale", scale) == 0
    with Image.open(gif) as im:
        assert im.size == (fw, fh + CAPTION_HEIGHT)
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    assert len(frames) == 3
    for k, frame in enumerate(frames):
        check_frame(frame, windows[k], sensor_wh, scale, f"{parts[-1]} GIF frame {k}")

    png = tmp_path / "grid.png"
    assert view(path, "--out", png, "--window-ms", window / 1000, "--scale", scale, "--tiles", 3,
                "--columns", 2) == 0
    with Image.open(png) as im:
        grid = np.asarray(im.convert("RGB"))
    tile_w, tile_h = fw, fh + CAPTION_HEIGHT
    assert grid.shape == (2 * tile_h + GAP, 2 * tile_w + GAP, 3)
    for k in range(3):
        y, x = (k // 2) * (tile_h + GAP), (k % 2) * (tile_w + GAP)
        check_frame(grid[y:y + tile_h, x:x + tile_w], windows[k], sensor_wh, scale, f"{parts[-1]} PNG tile {k}")


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_array_containers_render_like_the_recording_they_hold(tmp_path, suffix):
    events, size = read_events(require_data("format_samples", "tonic_test_data", "sample_nmnist.bin"))
    path = write_events(tmp_path / f"nmnist{suffix}", events, size)
    window = three_windows(events)
    t0 = int(events["t"][0])
    assert view(path, "--out", tmp_path / "grid.png", "--window-ms", window / 1000, "--scale", "3",
                "--tiles", 3, "--columns", 3) == 0
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    tile_w, tile_h = 34 * 3, 34 * 3 + CAPTION_HEIGHT
    assert grid.shape == (tile_h, 3 * tile_w + 2 * GAP, 3)
    for k in range(3):
        win = events[(events["t"] >= t0 + k * window) & (events["t"] < t0 + (k + 1) * window)]
        x = k * (tile_w + GAP)
        check_frame(grid[:tile_h, x:x + tile_w], win, (34, 34), "3", f"{suffix} tile {k}")


def test_default_scale_and_window_fit_a_small_sensor(tmp_path, capsys):
    path = require_data("format_samples", "tonic_test_data", "sample_nmnist.bin")
    assert view(path, "--out", tmp_path / "clip.gif") == 0
    out = capsys.readouterr().out
    # 34 px sensor: zoomed 256 // 34 = 7 times; 310.5 ms / 40 = 7.8 ms -> 5 ms windows (1-2-5 steps)
    assert "238x238 px (scale 7)" in out and "windows of 5 ms" in out
    with Image.open(tmp_path / "clip.gif") as im:
        assert im.size == (238, 238 + CAPTION_HEIGHT)
        assert im.n_frames >= 60  # 63 windows; identical neighbours may be merged by the GIF writer


def test_flip_y_puts_row_zero_at_the_bottom(tmp_path):
    path = require_data("format_samples", "tonic_test_data", "sample_nmnist.bin")
    events, _ = read_events(path)
    span = int(events["t"][-1] - events["t"][0]) + 1
    assert view(path, "--out", tmp_path / "a.png", "--window-ms", span / 1000, "--scale", "1", "--tiles", 1) == 0
    assert view(path, "--out", tmp_path / "b.png", "--window-ms", span / 1000, "--scale", "1", "--tiles", 1,
                "--flip-y") == 0
    a = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))[:34]
    b = np.asarray(Image.open(tmp_path / "b.png").convert("RGB"))[:34]
    assert np.array_equal(a[::-1], b)


def test_spike_data_render_as_a_raster_plot(tmp_path):
    # 64 channels, two polarities: channel c fires ON at t = 1000 c µs and OFF 500 µs later.
    c = np.arange(64)
    t = np.concatenate([1000 * c, 1000 * c + 500])
    order = np.argsort(t, kind="stable")
    ev = make_events(np.concatenate([c, c])[order], np.zeros(128, int), t[order],
                     np.concatenate([np.ones(64, int), np.zeros(64, int)])[order])
    path = write_events(tmp_path / "spikes.npz", ev, (64, 1, 2))
    # one frame of 64 ms over 128 columns: ON spikes in column 2c, OFF in column 2c + 1; channel 0 at the bottom
    assert view(path, "--out", tmp_path / "raster.png", "--window-ms", 64, "--raster-width", 128, "--scale", "2",
                "--tiles", 1) == 0
    img = np.asarray(Image.open(tmp_path / "raster.png").convert("RGB"))
    assert img.shape == (128 + CAPTION_HEIGHT, 128, 3)
    for ch in range(64):
        rows = slice(2 * (63 - ch), 2 * (63 - ch) + 2)
        assert (img[rows, 2 * ch] == COLORS.on).all(), ch
        assert (img[rows, 2 * ch + 1] == COLORS.off).all(), ch
        others = np.ones(128, bool)
        others[[2 * ch, 2 * ch + 1]] = False
        assert (img[rows, :128][:, others] == COLORS.background).all(), ch


def test_checkpoint_adds_the_probability_panel_beside_each_frame(tmp_path, capsys):
    path = require_data("dvsgesture_slayer_bs2", "4.bs2")
    ckpt = CHECKPOINT
    events, _ = read_events(path)
    t0 = int(events["t"][0])
    assert view(path, "--checkpoint", ckpt, "--out", tmp_path / "g.gif", "--window-ms", 50, "--max-frames", 3) == 0
    out = capsys.readouterr()
    assert "decision at" in out.out
    assert "the first 3 were rendered" in out.err  # 29 frames in the recording, limited to 3
    with Image.open(tmp_path / "g.gif") as im:
        # 128 x 128 sensor zoomed twice; the panel is at least as tall as frame + caption
        assert im.size == (256 + PANEL_WIDTH, max(256 + CAPTION_HEIGHT, PANEL_MIN_HEIGHT))
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    assert len(frames) == 3
    for k, frame in enumerate(frames):
        win = events[(events["t"] >= t0 + k * 50_000) & (events["t"] < t0 + (k + 1) * 50_000)]
        check_frame(frame, win, (128, 128), "2", f"panel GIF frame {k}")
        panel = frame[:, 256:]
        assert (panel != COLORS.background).any()


def test_mp4_without_an_encoder_names_the_alternatives(tmp_path, monkeypatch, capsys):
    import shutil

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails
    monkeypatch.setattr(shutil, "which", lambda name: None)
    path = require_data("format_samples", "tonic_test_data", "sample_nmnist.bin")
    assert view(path, "--out", tmp_path / "clip.mp4") == 1
    err = capsys.readouterr().err
    assert "imageio-ffmpeg" in err and "ffmpeg" in err and ".gif" in err
    assert not (tmp_path / "clip.mp4").exists()


def test_mp4_when_an_encoder_is_installed(tmp_path):
    from evmamba.render.output import find_ffmpeg

    try:
        find_ffmpeg()
    except RuntimeError:
        pytest.skip("no ffmpeg encoder installed (pip install imageio-ffmpeg)")
    path = require_data("format_samples", "tonic_test_data", "sample_nmnist.bin")
    assert view(path, "--out", tmp_path / "clip.mp4", "--window-ms", 50) == 0
    data = (tmp_path / "clip.mp4").read_bytes()
    assert data[4:8] == b"ftyp" and len(data) > 1000


@pytest.mark.parametrize("args, message", [
    (["--out", "x.bmp"], "use .gif, .png or .mp4"),
    (["--scale", "1.5"], "--scale"),
    (["--scale", "0.3"], "--scale"),
    (["--start-ms", "5000"], "--start-ms"),
    (["--speed", "0"], "--speed"),
    (["--on-color", "orange"], "--on-color"),
    (["--window-ms", "-1"], "--window-ms"),
])
def test_bad_options_are_refused_with_the_option_named(tmp_path, capsys, args, message):
    path = require_data("format_samples", "tonic_test_data", "sample_nmnist.bin")
    out = [] if "--out" in args else ["--out", str(tmp_path / "x.gif")]
    assert view(path, *out, *args) == 1
    assert message in capsys.readouterr().err


def test_recording_outside_the_checkpoint_sensor_is_refused(tmp_path, capsys):
    path = require_data("format_samples", "aestream_example", "davis.aedat4")  # 346 x 260 > 128 x 128
    assert view(path, "--checkpoint", CHECKPOINT, "--out", tmp_path / "x.gif") == 1
    err = capsys.readouterr().err
    assert "davis.aedat4" in err and "(128, 128, 2)" in err
