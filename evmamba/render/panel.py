"""The class-probability panel drawn beside an event frame, and the layout of a picture.

:class:`ProbabilityPanel` draws, for a moment ``t`` of a recording (µs since its first event):

* the current decision: the top class of the latest logits available at ``t`` and its probability;
* bars of the ``top_k`` most probable classes at ``t``;
* the probabilities over time of the ``top_k`` classes that reach the highest probability anywhere in the
  recording, drawn up to ``t`` over an axis that spans the whole recording, with a cursor at ``t``.

A class keeps one colour in bars and curves (:data:`LINE_COLORS` by the rank of its highest probability;
classes without a curve have grey bars). :func:`compose` puts a frame, its caption strip and the panel
into one picture; :func:`grid` tiles pictures into one image.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

RGB = tuple[int, int, int]

PANEL_WIDTH = 300  # pixels
PANEL_MIN_HEIGHT = 230  # pixels: room for the decision, five bars and the plot
CAPTION_HEIGHT = 16  # pixels: the strip under a frame with its time window
GAP = 4  # pixels between the tiles of a grid

PANEL_BG: RGB = (30, 30, 30)
TEXT: RGB = (235, 235, 235)
DIM: RGB = (150, 150, 150)
AXIS: RGB = (90, 90, 90)
OTHER: RGB = (110, 110, 110)  # bars of classes without a curve
SEPARATOR: RGB = (70, 70, 70)  # the gaps between the tiles of a grid
#: Curve and bar colours, by rank of a class's highest probability over the recording.
LINE_COLORS: tuple[RGB, ...] = ((80, 200, 120), (255, 110, 90), (90, 170, 255), (235, 200, 70), (200, 120, 230))


@lru_cache(maxsize=4)
def font(size: int = 11):
    """Pillow's bundled default font at ``size`` pixels (the bitmap font on Pillow versions without one)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no sized default font
        return ImageFont.load_default()


def _fit(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


class ProbabilityPanel:
    """Draws the panel for any moment of one recording; see the module docstring.

    ``times_us`` ``(M,)`` non-decreasing: when each row of ``probs`` ``(M, C)`` is available (µs since the
    recording's first event); ``classes`` the ``C`` names; ``duration_us`` the span of the time axis.
    """

    def __init__(self, times_us: np.ndarray, probs: np.ndarray, classes, duration_us: int,
                 height: int = PANEL_MIN_HEIGHT, width: int = PANEL_WIDTH, top_k: int = 5):
        times_us = np.asarray(times_us, dtype=np.int64)
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != times_us.shape[0] or probs.shape[1] != len(classes):
            raise ValueError(
                f"ProbabilityPanel: probs must be (M={times_us.shape[0]}, C={len(classes)}); got {probs.shape}"
            )
        if times_us.size > 1 and (np.diff(times_us) < 0).any():
            raise ValueError("ProbabilityPanel: times_us must be non-decreasing")
        if width < 160 or height < PANEL_MIN_HEIGHT:
            raise ValueError(
                f"ProbabilityPanel: the panel needs at least 160 x {PANEL_MIN_HEIGHT} pixels; got {width} x {height}"
            )
        self.times, self.probs, self.classes = times_us, probs, [str(c) for c in classes]
        self.duration = max(int(duration_us), 1)
        self.width, self.height = int(width), int(height)
        self.top_k = max(1, min(int(top_k), len(LINE_COLORS), len(self.classes)))
        peak = probs.max(axis=0) if probs.shape[0] else np.zeros(len(self.classes))
        order = np.lexsort((np.arange(peak.size), -peak))  # highest peak first; ties by class index
        self.curve_classes = [int(c) for c in order[: self.top_k]]
        self.color = {c: LINE_COLORS[r] for r, c in enumerate(self.curve_classes)}
        # The plot's box and, per pixel column, the row of the latest probabilities at that column's time.
        self.bars_top = 24
        self.box = (30, self.bars_top + 16 * self.top_k + 10, self.width - 8, self.height - 18)
        x0, _, x1, _ = self.box
        cols = x1 - x0 + 1
        self.col_t = (np.arange(cols, dtype=np.float64) * self.duration / max(cols - 1, 1)).astype(np.int64)
        self.col_row = np.searchsorted(self.times, self.col_t, side="right") - 1

    def row_at(self, t_us: int) -> int:
        """Row of the latest probabilities available at ``t_us``; -1 before the first one."""
        return int(np.searchsorted(self.times, int(t_us), side="right") - 1)

    def decision(self, t_us: int) -> tuple[int, float] | None:
        """``(class, probability)`` of the top class at ``t_us``; None before the first token."""
        r = self.row_at(t_us)
        if r < 0:
            return None
        c = int(self.probs[r].argmax())
        return c, float(self.probs[r, c])

    def render(self, t_us: int) -> np.ndarray:
        """The panel at ``t_us`` (µs since the first event) as ``(height, width, 3)`` uint8 RGB."""
        from PIL import Image, ImageDraw

        img = Image.new("RGB", (self.width, self.height), PANEL_BG)
        d = ImageDraw.Draw(img)
        f = font(11)
        r = self.row_at(t_us)
        if r < 0:
            d.text((6, 5), "decision: waiting for the first token", fill=DIM, font=f)
        else:
            p = self.probs[r]
            c = int(p.argmax())
            d.text((6, 5), f"decision: {_fit(self.classes[c], 34)}  {p[c]:.2f}", fill=TEXT, font=f)
            top = np.lexsort((np.arange(p.size), -p))[: self.top_k]
            bar_x0, bar_x1 = 128, self.width - 44
            for i, k in enumerate(top):
                y = self.bars_top + 16 * i
                d.text((6, y), _fit(self.classes[int(k)], 19), fill=TEXT if int(k) == c else DIM, font=f)
                d.rectangle((bar_x0, y + 2, bar_x1, y + 11), outline=AXIS)
                filled = bar_x0 + int(round((bar_x1 - bar_x0) * float(p[k])))
                if filled > bar_x0:
                    d.rectangle((bar_x0, y + 2, filled, y + 11), fill=self.color.get(int(k), OTHER))
                d.text((bar_x1 + 5, y), f"{p[k]:.2f}", fill=DIM, font=f)
        self._plot(d, int(t_us), f)
        return np.asarray(img)

    def _plot(self, d, t_us: int, f) -> None:
        x0, y0, x1, y1 = self.box
        d.rectangle((x0, y0, x1, y1), outline=AXIS)
        d.text((6, y0 - 2), "1", fill=DIM, font=f)
        d.text((6, y1 - 11), "0", fill=DIM, font=f)
        d.text((x0, y1 + 3), "0 s", fill=DIM, font=f)
        end = f"{self.duration / 1e6:.3g} s"
        d.text((x1 - 6 * len(end), y1 + 3), end, fill=DIM, font=f)
        shown = np.flatnonzero((self.col_t <= t_us) & (self.col_row >= 0))
        if shown.size:
            rows = self.col_row[shown]
            xs = x0 + shown
            for c in reversed(self.curve_classes):  # the highest-ranked curve is drawn last, on top
                ys = y1 - np.round(self.probs[rows, c] * (y1 - y0)).astype(np.int64)
                pts = list(zip(xs.tolist(), ys.tolist()))
                if len(pts) == 1:
                    d.point(pts, fill=self.color[c])
                else:
                    d.line(pts, fill=self.color[c], width=1)
        cursor = x0 + int(round(min(max(t_us, 0), self.duration) * (x1 - x0) / self.duration))
        d.line((cursor, y0, cursor, y1), fill=TEXT, width=1)


def caption(width: int, text: str, background: RGB) -> np.ndarray:
    """A ``(CAPTION_HEIGHT, width, 3)`` strip with ``text`` on ``background``."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (int(width), CAPTION_HEIGHT), background)
    ImageDraw.Draw(img).text((3, 2), text, fill=DIM, font=font(11))
    return np.asarray(img)


def compose(frame: np.ndarray, caption_text: str, panel: np.ndarray | None, background: RGB) -> np.ndarray:
    """One picture: ``frame`` at the top left, its caption strip under it, ``panel`` (if any) to the right.

    Size: width = frame width (+ panel width), height = max(frame height + :data:`CAPTION_HEIGHT`, panel
    height); the space left over is ``background``.
    """
    fh, fw = frame.shape[:2]
    h = fh + CAPTION_HEIGHT
    w = fw
    if panel is not None:
        h = max(h, panel.shape[0])
        w += panel.shape[1]
    out = np.empty((h, w, 3), np.uint8)
    out[:] = background
    out[:fh, :fw] = frame
    out[fh:fh + CAPTION_HEIGHT, :fw] = caption(fw, caption_text, background)
    if panel is not None:
        out[: panel.shape[0], fw:] = panel
    return out


def grid(pictures: list[np.ndarray], columns: int, background: RGB = SEPARATOR) -> np.ndarray:
    """Pictures of one size in rows of ``columns``, :data:`GAP` pixels of ``background`` apart: tile ``i``
    has its top left corner at ``((i % columns) * (w + GAP), (i // columns) * (h + GAP))``; the cells of
    the last row that hold no picture are ``background`` too."""
    if not pictures:
        raise ValueError("grid: no pictures")
    h, w = pictures[0].shape[:2]
    columns = max(1, min(int(columns), len(pictures)))
    rows = -(-len(pictures) // columns)
    out = np.empty((rows * h + (rows - 1) * GAP, columns * w + (columns - 1) * GAP, 3), np.uint8)
    out[:] = background
    for i, pic in enumerate(pictures):
        y, x = (i // columns) * (h + GAP), (i % columns) * (w + GAP)
        out[y:y + h, x:x + w] = pic
    return out


__all__ = [
    "CAPTION_HEIGHT",
    "GAP",
    "LINE_COLORS",
    "PANEL_MIN_HEIGHT",
    "PANEL_WIDTH",
    "ProbabilityPanel",
    "SEPARATOR",
    "caption",
    "compose",
    "font",
    "grid",
]
