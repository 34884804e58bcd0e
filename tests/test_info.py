"""``evmamba info``: per-file figures against the counts and durations documented in the data folder's
PROVENANCE.md, event statistics against values worked out by hand, and datasets by config name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evmamba import cli
from evmamba.core.events import make_events
from evmamba.datasets.paths import require_data
from evmamba.pipeline.readers import write_events
from evmamba.pipeline.stats import event_stats

# file under format_samples/, format, events, sensor (W, H), duration (s) -- from PROVENANCE.md section 4.
FILES = [
    ("tonic_test_data/sample_nmnist.bin", "nmnist_bin", 4325, (34, 34), 0.311),
    ("tonic_test_data/sample.aedat4", "aedat4", 111_954, (320, 240), 0.59),
    ("aestream_example/davis.aedat4", "aedat4", 117_667, (346, 260), 0.13),
    ("tonic_test_data/sample_ncars.dat", "prophesee_dat", 2009, (78, 42), 0.100),
    ("expelliarmus_sample_files/dat_test_NCARS.dat", "prophesee_dat", 4407, None, 0.100),
    ("expelliarmus_sample_files/evt2_sample.raw", "evt2", 539_481, (640, 480), 0.050),
    ("expelliarmus_sample_files/evt3_sample.raw", "evt3", 219_596, (1280, 720), None),  # duration: see below
    ("expelliarmus_sample_files/evt3_test_pedestrians.raw", "evt3", 5000, (1280, 720), None),
    ("dvs128_aedat2_recordings/alex_walking_again.aedat", "aedat2_dvs128", 19_182, (128, 128), 6.9),
    ("dvs128_aedat2_recordings/neal_walking.aedat", "aedat2_dvs128", 70_304, (128, 128), 9.2),
]


def info_json(capsys, *args) -> list[dict]:
    assert cli.main(["info", *map(str, args), "--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_json_reports_the_documented_counts_and_durations(capsys):
    paths = [require_data("format_samples", *rel.split("/")) for rel, *_ in FILES]
    records = info_json(capsys, *paths)
    assert len(records) == len(FILES)
    for r, (rel, fmt, count, wh, seconds) in zip(records, FILES):
        assert r["kind"] == "file" and r["path"].endswith(rel)
        assert r["format"] == fmt, rel
        assert r["events"] == count, rel
        assert r["on"] + r["off"] == count and 0 < r["on_fraction"] < 1, rel
        if wh is not None:
            assert tuple(r["sensor_size"][:2]) == wh, rel
        assert r["x_range"][1] < r["sensor_size"][0] and r["y_range"][1] < r["sensor_size"][1], rel
        assert r["duration_us"] == r["t_last_us"] - r["t_first_us"]
        if seconds is not None:
            assert r["duration_us"] / 1e6 == pytest.approx(seconds, rel=0.01), rel
        assert r["rate_mean_per_s"] == pytest.approx(count / (r["duration_us"] * 1e-6))
        assert r["time_order"] == {"sorted": True, "problem": None}


def test_info_evt3_durations_follow_the_specification(capsys):
    # PROVENANCE.md: decoding per Prophesee's EVT 3.0 specification gives 8,801 µs and 45,210 µs, with
    # largest gaps of 1 µs and 86 µs.
    folder = require_data("format_samples", "expelliarmus_sample_files")
    a, b = info_json(capsys, folder / "evt3_sample.raw", folder / "evt3_test_pedestrians.raw")
    assert (a["duration_us"], b["duration_us"]) == (8801, 45_210)
    assert (a["largest_gap_us"], b["largest_gap_us"]) == (1, 86)


def test_event_stats_against_hand_worked_values():
    # 10 ms windows from the first event (t = 1000): [1000, 11000) holds 3 events, [11000, 21000) 1,
    # [21000, 31000) 4 -> peak 4 / 10 ms = 400 ev/s, at 20 000 µs after the first event.
    t = [1000, 1000, 5000, 15000, 21000, 21000, 21000, 30999]
    p = [1, 0, 1, 1, 0, 0, 1, 1]
    ev = make_events([0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 1, 1, 2, 2, 3, 3], t, p)
    s = event_stats(ev, (8, 4, 2))
    assert s["events"] == 8 and s["duration_us"] == 29_999
    assert s["rate_mean_per_s"] == pytest.approx(8 / 0.029999)
    assert s["rate_peak_per_s"] == pytest.approx(400.0) and s["peak_at_us"] == 20_000
    assert (s["on"], s["off"], s["on_fraction"]) == (5, 3, 5 / 8)
    # gaps 0, 4000, 10000, 6000, 0, 0, 9999: the longest ends at t = 15000, 14 000 µs after the first event
    assert (s["largest_gap_us"], s["largest_gap_at_us"]) == (10_000, 14_000)
    assert s["same_time_fraction"] == pytest.approx(3 / 8)
    assert s["x_range"] == [0, 7] and s["y_range"] == [0, 3]


def test_event_stats_of_an_empty_stream_and_a_single_event():
    assert event_stats(make_events([], [], [], []), (4, 4, 2))["rate_mean_per_s"] is None
    one = event_stats(make_events([1], [1], [50], [1]), (4, 4, 2))
    assert one["duration_us"] == 0 and one["rate_mean_per_s"] is None and one["rate_peak_per_s"] == 100.0


def test_unsorted_file_is_described_after_sorting_and_says_so(tmp_path, capsys):
    ev = make_events([0, 1, 2, 3], [0, 0, 0, 0], [0, 300, 200, 400], [1, 0, 1, 0])
    path = tmp_path / "backwards.npy"
    np.save(path, ev)
    (r,) = info_json(capsys, path)
    assert r["events"] == 4 and r["duration_us"] == 400
    assert r["time_order"]["sorted"] is False
    assert "not sorted" in r["time_order"]["problem"] and "t=200" in r["time_order"]["problem"]
    assert cli.main(["info", str(path), "--no-progress"]) == 0
    assert "NOT sorted" in capsys.readouterr().out


def test_text_output_names_format_sensor_and_rates(capsys):
    path = require_data("format_samples", "tonic_test_data", "sample_nmnist.bin")
    assert cli.main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for text in ("nmnist_bin", "34 x 34, 2 polarities", "4,325", "mean", "peak (10 ms windows", "ON 2,145"):
        assert text in out, text


def test_dataset_by_config_name_counts_recordings_classes_and_events(capsys):
    # PROVENANCE.md section 3: ten trials of 63,471 .. 181,179 events, 1.45 s each, one per class 1..10.
    (r,) = info_json(capsys, "dvsgesture_samples", "--split", "all")
    assert r["kind"] == "dataset" and r["dataset"] == "dvsgesture_samples"
    assert r["sensor_size"] == [128, 128, 2] and len(r["classes"]) == 11
    s = r["splits"]["all"]
    assert s["recordings"] == 10 and s["recordings_read"] == 10
    assert list(s["class_counts"].values()) == [1] * 10 + [0]
    assert s["events_per_recording"] == {"min": 63_471, "median": (113_063 + 124_244) / 2, "max": 181_179}
    assert s["duration_us"]["min"] == pytest.approx(1.45e6, abs=1000)
    assert s["duration_us"]["max"] == pytest.approx(1.45e6, abs=1000)


def test_dataset_splits_default_to_train_and_test_and_can_be_sampled(capsys):
    # PROVENANCE.md section 1: class counts of the 1000 training and 100 test samples.
    (r,) = info_json(capsys, "nmnist_small", "--max-recordings", "4")
    train, test = r["splits"]["train"], r["splits"]["test"]
    assert list(r["splits"]) == ["train", "test"]
    assert list(train["class_counts"].values()) == [97, 116, 99, 93, 105, 92, 94, 117, 87, 100]
    assert list(test["class_counts"].values()) == [8, 14, 8, 11, 14, 7, 10, 15, 2, 11]
    assert (train["recordings"], train["recordings_read"]) == (1000, 4)
    assert 1069 <= train["events_per_recording"]["min"] <= train["events_per_recording"]["max"] <= 7152


def test_overrides_reach_the_config(capsys):
    (r,) = info_json(capsys, "synthetic", "dataset.n_samples=3", "--split", "test")
    assert r["splits"]["test"]["recordings"] == 3


def test_missing_target_is_an_error_but_the_others_are_still_described(tmp_path, capsys):
    good = require_data("format_samples", "tonic_test_data", "sample_nmnist.bin")
    assert cli.main(["info", str(tmp_path / "nope.raw"), str(good), "--no-progress"]) == 1
    out = capsys.readouterr()
    assert "nope.raw: no such event file, and no config of that name" in out.err
    assert "nmnist_bin" in out.out


def test_file_with_events_outside_its_stored_sensor_is_reported(tmp_path, capsys):
    ev = make_events([0, 9], [0, 0], [0, 10], [1, 1])
    path = tmp_path / "big.npz"
    np.savez(path, events=ev, sensor_size=np.array([4, 4, 2]))
    assert cli.main(["info", str(path)]) == 1
    assert "field 'x'" in capsys.readouterr().err


def test_spike_data_keep_their_stored_sensor(tmp_path, capsys):
    ev = make_events([0, 1], [0, 0], [0, 10], [1, 0])
    (r,) = info_json(capsys, write_events(tmp_path / "a.npz", ev, (64, 1, 2)))
    assert r["sensor_size"] == [64, 1, 2]
    assert cli.main(["info", str(tmp_path / "a.npz")]) == 0
    assert "spike data: x = channel" in capsys.readouterr().out
