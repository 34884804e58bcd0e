"""Writing pictures: animated GIF and PNG with Pillow, MP4 through an ffmpeg executable.

Every file is written to a temporary name in the target folder and renamed into place, so an interrupted
run never leaves a half-written picture under the requested name.

GIF stores at most 256 colours per frame. Frames are mapped onto one fixed palette that holds every colour
the pictures are drawn with (``exact``) exactly, plus grey and colour ramps for the anti-aliased text; each
pixel takes the nearest palette colour (:func:`to_palette`, no dithering), so a pixel drawn in an event
colour reads back as that colour. (Pillow's own palette conversion looks colours up at reduced precision
and may merge two near colours, such as a dark background and a dark grey.) GIF delays are whole hundredths
of a second and browsers play delays under 20 ms at 100 ms, so a frame lasts at least 20 ms.

MP4 (H.264, yuv420p) needs an ffmpeg executable: the one of the ``imageio-ffmpeg`` package when it is
installed, else ``ffmpeg`` on ``PATH``; without either, :func:`find_ffmpeg` raises an error that names both
and the GIF alternative.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..core.files import replacing, temporary_sibling

RGB = tuple[int, int, int]
MIN_GIF_FRAME_MS = 20

#: File extensions :func:`output_kind` recognises.
KINDS = {".gif": "gif", ".png": "png", ".mp4": "mp4"}


def output_kind(path) -> str:
    """``"gif"``, ``"png"`` or ``"mp4"`` from the extension; ``ValueError`` naming the path otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in KINDS:
        raise ValueError(f"--out {path}: unknown picture type {suffix or '(none)'!r}; use .gif, .png or .mp4")
    return KINDS[suffix]


def _tmp_for(path: Path) -> Path:
    # The extension stays last: ffmpeg chooses the container by it.
    path.parent.mkdir(parents=True, exist_ok=True)
    return temporary_sibling(path, keep_suffix=True)


def gif_palette(exact: Iterable[RGB]) -> list[RGB]:
    """A palette of at most 256 colours: ``exact`` first (each kept exactly), then ramps from the darkest
    colour of ``exact`` to each of the others (anti-aliased text and lines blend those), then greys."""
    colors: list[RGB] = []
    for c in exact:
        c = tuple(int(v) for v in c)
        if c not in colors:
            colors.append(c)  # type: ignore[arg-type]
    if len(colors) > 256:
        raise ValueError(f"gif_palette: {len(colors)} exact colours; a GIF frame holds at most 256")
    base = min(colors, key=sum) if colors else (0, 0, 0)
    extra: list[RGB] = []
    for c in list(colors):
        for f in (0.2, 0.4, 0.6, 0.8):
            extra.append(tuple(int(round(b + (v - b) * f)) for b, v in zip(base, c)))  # type: ignore[arg-type]
    extra += [(g, g, g) for g in range(0, 256, 8)]
    for c in extra:
        if len(colors) >= 256:
            break
        if c not in colors:
            colors.append(c)
    return colors


def to_palette(frame: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 indices of the nearest ``palette`` ``(K, 3)`` entry (Euclidean in RGB) for each pixel
    of an ``(H, W, 3)`` uint8 frame; a colour that is in the palette maps to itself."""
    h, w = frame.shape[:2]
    flat = np.ascontiguousarray(frame, np.uint8).reshape(-1, 3).astype(np.int64)
    key = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    uniq, inverse = np.unique(key, return_inverse=True)
    colors = np.stack([uniq >> 16, (uniq >> 8) & 255, uniq & 255], axis=1)
    pal = palette.astype(np.int64)
    nearest = np.empty(uniq.size, np.int64)
    for a in range(0, uniq.size, 4096):  # bounded memory for frames with many colours
        d = ((colors[a:a + 4096, None, :] - pal[None, :, :]) ** 2).sum(-1)
        nearest[a:a + 4096] = d.argmin(1)
    return nearest[inverse.reshape(-1)].astype(np.uint8).reshape(h, w)


def write_gif(frames: Iterable[np.ndarray], path, frame_ms: float, exact_colors: Iterable[RGB]) -> int:
    """Write ``(H, W, 3)`` uint8 frames as an animated GIF that loops; returns the frame count.

    ``frame_ms``: how long each frame shows, rounded to 10 ms, at least :data:`MIN_GIF_FRAME_MS`.
    ``exact_colors``: the colours that must read back unchanged (see the module docstring). Consecutive
    frames that are identical may be stored as one longer frame by the GIF writer.
    """
    from PIL import Image

    colors = gif_palette(exact_colors)
    palette = np.asarray(colors, np.uint8)
    flat = [v for c in colors for v in c]
    images = []
    for f in frames:
        im = Image.fromarray(to_palette(np.asarray(f, np.uint8), palette), "P")
        im.putpalette(flat)
        images.append(im)
    if not images:
        raise ValueError(f"{path}: no frames to write")
    ms = max(MIN_GIF_FRAME_MS, int(round(frame_ms / 10.0)) * 10)
    path = Path(path)
    with replacing(path, keep_suffix=True) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=ms, loop=0,
                       optimize=False)
    return len(images)


def write_png(image: np.ndarray, path) -> None:
    """Write one ``(H, W, 3)`` uint8 image as PNG (compressed as far as Pillow goes)."""
    from PIL import Image

    path = Path(path)
    with replacing(path, keep_suffix=True) as tmp:
        Image.fromarray(np.asarray(image, np.uint8), "RGB").save(tmp, format="PNG", optimize=True)


def find_ffmpeg() -> str:
    """The ffmpeg executable for MP4: ``imageio_ffmpeg``'s, else ``ffmpeg`` on ``PATH``.

    Raises ``RuntimeError`` saying how to get one, or to write a GIF instead, when there is neither.
    """
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        if exe and Path(exe).is_file():
            return str(exe)
    except (ImportError, RuntimeError, OSError):
        pass
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    raise RuntimeError(
        "writing MP4 needs an ffmpeg encoder: install one with 'pip install imageio-ffmpeg' (or put an "
        "'ffmpeg' executable on PATH), or write an animated GIF instead (--out clip.gif)"
    )


def write_mp4(frames: Iterable[np.ndarray], path, fps: float, ffmpeg: str | None = None) -> int:
    """Encode ``(H, W, 3)`` uint8 frames of one size as H.264 MP4 at ``fps``; returns the frame count.

    Odd sizes are padded by one pixel of the frame's corner colour (yuv420p needs even sizes).
    """
    exe = ffmpeg or find_ffmpeg()
    path = Path(path)
    tmp = _tmp_for(path)
    proc = None
    n = 0
    try:
        for frame in frames:
            frame = np.asarray(frame, np.uint8)
            h, w = frame.shape[:2]
            if proc is None:
                size = (h, w)
                ph, pw = h + h % 2, w + w % 2
                cmd = [exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{pw}x{ph}",
                       "-r", f"{fps:.6g}", "-i", "-", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                       "-movflags", "+faststart", str(tmp)]
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            if (h, w) != size:
                raise ValueError(f"{path}: frame {n} is {w}x{h}, the first was {size[1]}x{size[0]}")
            if (ph, pw) != (h, w):
                frame = np.pad(frame, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
            try:
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
            except BrokenPipeError:  # ffmpeg stopped early: its message says why
                err = proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"{path}: ffmpeg ({exe}) failed: {err.strip()[-500:]}") from None
            n += 1
        if proc is None:
            raise ValueError(f"{path}: no frames to write")
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise RuntimeError(f"{path}: ffmpeg ({exe}) failed: {err.strip()[-500:]}")
        proc = None
        os.replace(tmp, path)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        if tmp.exists():
            tmp.unlink()
    return n


__all__ = ["KINDS", "MIN_GIF_FRAME_MS", "find_ffmpeg", "gif_palette", "output_kind", "to_palette", "write_gif",
           "write_mp4", "write_png"]
