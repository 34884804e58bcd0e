"""The terminal view of ``evmamba stream --live``: top classes as bars, a confidence sparkline over stream
time, redrawing in place on a terminal and plain lines elsewhere."""

from __future__ import annotations

import io

import numpy as np
import pytest

from evmamba.streaming.liveview import SPARK_ASCII, SPARK_UNICODE, LiveView, bar, sparkline

CLASSES = ["clap", "wave", "roll", "drums"]


class Terminal(io.StringIO):
    """A text stream that says it is a UTF-8 terminal."""

    encoding = "utf-8"

    def isatty(self):
        return True


def test_sparkline_and_bar_map_values_to_characters():
    assert sparkline([0.0, 0.5, 1.0, 2.0, -1.0]) == "▁▅██▁"  # eight levels; values clipped to [0, 1]
    assert sparkline([0.0, 0.13, 0.26], SPARK_ASCII) == "_.-"
    assert bar(0.5, 10) == "#####-----" and bar(1.2, 4) == "####" and bar(0.0, 3) == "---"


def test_render_shows_the_top_classes_and_the_confidence_trend():
    view = LiveView(CLASSES, stream=Terminal(), top_k=2, sample_us=100_000, history=10)
    # the top class's probability at 0, 100, ..., 400 ms: 0.3, 0.5, 0.7, 0.9, 0.9; 'wave' leads from 200 ms
    for t, p in zip(range(0, 500_000, 100_000), [0.3, 0.5, 0.7, 0.9, 0.9]):
        probs = np.array([0.0, p, 0.0, 1 - p]) if t >= 200_000 else np.array([p, 0.0, 0.0, 1 - p])
        view.update("rec", t, probs, events=1000, queue=0)
    lines = view.render("rec", 400_000, np.array([0.0, 0.9, 0.0, 0.1]), events=1000, queue=0)
    assert len(lines) == 4
    assert lines[0].startswith("rec") and "t =    0.400 s" in lines[0] and "events 1,000" in lines[0]
    assert "wave" in lines[1] and lines[1].endswith("0.90") and "█" * 18 in lines[1]
    assert "drums" in lines[2] and lines[2].endswith("0.10")
    # 0.3 -> ▃, 0.5 -> ▅, 0.7 -> ▆, 0.9 -> █ ('drums' leads at 0 and 100 ms with 0.7 and 0.5)
    assert sparkline([0.7, 0.5, 0.7, 0.9, 0.9]) in lines[3]
    assert "last 0.5 s; wave on top for 0.20 s" in lines[3]


def test_a_new_recording_starts_a_new_trend():
    view = LiveView(CLASSES, stream=Terminal(), sample_us=100_000)
    view.update("a", 0, np.array([0.9, 0.1, 0, 0]), 1, 0)
    view.update("a", 300_000, np.array([0.9, 0.1, 0, 0]), 1, 0)
    view.update("b", 0, np.array([0.2, 0.8, 0, 0]), 1, 0)
    line = view.render("b", 0, np.array([0.2, 0.8, 0, 0]), 1, 0)[-1]
    assert "confidence  ▇  last 0.1 s; wave on top for 0.00 s" in line  # 0.8 -> the seventh of eight levels


def test_terminal_block_is_redrawn_in_place():
    term = Terminal()
    view = LiveView(CLASSES, stream=term, hz=1e9, top_k=3)
    view.update("rec", 0, np.array([0.4, 0.3, 0.2, 0.1]), 10, 0)
    view.update("rec", 1000, np.array([0.1, 0.2, 0.3, 0.4]), 20, 0)
    view.close()
    text = term.getvalue()
    assert text.count("\x1b[5F") == 2  # the second draw and close() go back up the five lines
    assert text.count("\x1b[2K") == 15
    assert text.endswith("\n")


def test_a_file_gets_plain_lines_at_most_once_a_second(monkeypatch):
    out = io.StringIO()  # not a terminal, no encoding: ASCII characters
    view = LiveView(CLASSES, stream=out)
    for t in range(0, 50_000, 1000):
        view.update("rec", t, np.array([0.7, 0.1, 0.1, 0.1]), t, 0)
    view.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first update and close(); the others came within a second
    assert "\x1b" not in out.getvalue()
    assert "clap" in lines[-1] and "##############------" in lines[-1]
    assert all(c in SPARK_ASCII for c in lines[-1].split("confidence  ")[1].split()[0])
    assert not set(SPARK_UNICODE) & set(out.getvalue())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="top_k"):
        LiveView(CLASSES, top_k=0)
    with pytest.raises(ValueError, match="hz"):
        LiveView(CLASSES, hz=0)
