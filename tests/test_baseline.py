"""``evmamba baseline``: count histograms, cosine nearest neighbours and the command on known-answer data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from evmamba.cli import main
from evmamba.core.config import load_config
from evmamba.core.events import make_events
from evmamba.evaluation.histograms import (
    HistogramSettings,
    cell_grid,
    coarsen_time,
    count_histogram,
    default_cell,
    feature_vectors,
)
from evmamba.evaluation.neighbours import knn_vote, nearest_neighbours
from evmamba.evaluation.nn_baseline import BaselineOptions, run_baseline
from evmamba.pipeline.readers import write_events
from evmamba.training.data import recording_splits


def random_events(rng, n, x_range, y_range, n_pol=2, t_max=100_000):
    x = rng.integers(*x_range, n)
    y = rng.integers(*y_range, n)
    return make_events(x, y, np.sort(rng.integers(0, t_max, n)), rng.integers(0, n_pol, n))


# ------------------------------------------------------------------------------------------ histograms
def test_time_slices_split_each_recording_into_equal_shares():
    # t0 = 1000 µs, last = 1099 µs: the span is 100 µs, so with 4 slices an event at 1000 + u falls in
    # slice floor(4u / 100): u = 0, 10, 24 -> 0; 25 -> 1; 50 -> 2; 74 -> 2; 75, 99 -> 3.
    u = np.array([0, 10, 24, 25, 50, 74, 75, 99])
    ev = make_events(np.zeros(8), np.zeros(8), 1000 + u, np.zeros(8))
    h = count_histogram(ev, (4, 4, 1), cell=4, time_bins=4)
    assert h.shape == (4, 1, 1, 1) and h.dtype == np.float32
    assert h[:, 0, 0, 0].tolist() == [3, 1, 2, 2]


def test_cells_polarities_and_slices_land_where_the_definition_says():
    rng = np.random.default_rng(0)
    sensor = (34, 30, 2)
    ev = random_events(rng, 3000, (0, 34), (0, 30))
    cell, bins = 4, 3
    h = count_histogram(ev, sensor, cell, bins)
    n_x, n_y = -(-34 // 4), -(-30 // 4)
    assert h.shape == (bins, n_y, n_x, 2) and (n_x, n_y) == cell_grid(sensor, cell)
    # The same counts by a different route: bin by bin with boolean masks.
    t = ev["t"].astype(np.int64)
    rel = (t - t[0]) / (t[-1] - t[0] + 1)
    expected = np.zeros_like(h)
    for b in range(bins):
        in_bin = (rel >= b / bins) & (rel < (b + 1) / bins)
        for cy in range(n_y):
            for cx in range(n_x):
                in_cell = (
                    (ev["x"] >= cx * cell)
                    & (ev["x"] < cx * cell + cell)
                    & (ev["y"] >= cy * cell)
                    & (ev["y"] < cy * cell + cell)
                )
                for p in range(2):
                    expected[b, cy, cx, p] = np.count_nonzero(in_bin & in_cell & (ev["p"] == p))
    np.testing.assert_array_equal(h, expected)
    assert h.sum() == ev.size


def test_fewer_time_bins_are_sums_of_more():
    rng = np.random.default_rng(1)
    ev = random_events(rng, 2000, (0, 20), (0, 20), t_max=12_345)
    fine = count_histogram(ev, (20, 20, 2), 5, 12)[None]
    for t in (1, 2, 3, 4, 6):
        np.testing.assert_array_equal(coarsen_time(fine, t)[0], count_histogram(ev, (20, 20, 2), 5, t))
    with pytest.raises(ValueError, match="5 time bins do not divide the 12"):
        coarsen_time(fine, 5)


def test_default_cell_fits_any_sensor():
    assert default_cell((34, 34, 2)) == 3  # 12 x 12 cells
    assert default_cell((128, 128, 2)) == 8  # 16 x 16
    assert default_cell((1280, 720, 2)) == 61  # 21 x 12
    assert default_cell((700, 1, 1)) == 3  # 234 channel groups (SHD)
    assert default_cell((8, 8, 2)) == 1  # fewer pixels than cells: one pixel per cell
    for sensor in [
        (34, 34, 2),
        (35, 35, 2),
        (64, 64, 2),
        (304, 240, 2),
        (346, 260, 2),
        (1280, 720, 2),
        (700, 1, 1),
        (64, 1, 2),
    ]:
        c = default_cell(sensor)
        assert np.prod(cell_grid(sensor, c)) <= 256
        assert c == 1 or np.prod(cell_grid(sensor, c - 1)) > 256  # the smallest such cell


def test_spike_data_cells_are_channel_groups():
    # A tactile-like sensor: 64 channels on one row, two polarities.
    ev = make_events([0, 1, 2, 3, 4, 63], [0] * 6, [0, 1, 2, 3, 4, 5], [0, 1, 0, 1, 1, 0])
    h = count_histogram(ev, (64, 1, 2), cell=4, time_bins=1)
    assert h.shape == (1, 1, 16, 2)
    assert h[0, 0, 0].tolist() == [2, 2] and h[0, 0, 1].tolist() == [0, 1] and h[0, 0, 15].tolist() == [1, 0]
    assert HistogramSettings(4, 1).describe((64, 1, 2)) == "4-channel groups (16), 1 time bin"


def test_bad_input_is_refused_with_the_source_named():
    ev = make_events([40], [0], [0], [0])
    with pytest.raises(ValueError, match=r"rec\.npy: field 'x' has value 40"):
        count_histogram(ev, (34, 34, 2), 3, 4, source="rec.npy")
    with pytest.raises(ValueError, match="time_bins must be a positive integer"):
        count_histogram(ev[:0], (34, 34, 2), 3, 0)
    with pytest.raises(TypeError, match="events must have dtype"):
        count_histogram(np.zeros(3), (34, 34, 2), 3, 4)


def test_empty_recording_gives_a_zero_vector():
    h = count_histogram(make_events([], [], [], []), (34, 34, 2), 3, 4)
    assert h.shape == (4, 12, 12, 2) and not h.any()
    assert not feature_vectors(h[None]).any()


# ------------------------------------------------------------------------------------------ neighbours
def test_cosine_neighbours_match_brute_force():
    rng = np.random.default_rng(2)
    refs = rng.random((300, 40)) ** 3  # non-negative, like counts
    queries = rng.random((57, 40)) ** 3
    # Brute force in float64: cosine distance 1 - a.b / (|a| |b|), then sorted by (distance, index).
    dist = 1 - (queries @ refs.T) / np.linalg.norm(queries, axis=1)[:, None] / np.linalg.norm(refs, axis=1)[None]
    order = np.argsort(dist, axis=1, kind="stable")[:, :5]
    # A block of 1 KiB holds fewer than one row of similarities: every query is its own block.
    for block in (1024, 64 << 20):
        idx, sim = nearest_neighbours(feature_vectors(queries), feature_vectors(refs), 5, block_bytes=block)
        np.testing.assert_array_equal(idx, order)
        np.testing.assert_allclose(1 - sim, np.take_along_axis(dist, order, 1), atol=2e-6)


def test_identical_references_tie_to_the_first():
    rng = np.random.default_rng(3)
    a, b, c = rng.random((3, 16))
    refs = feature_vectors(np.stack([b, a, c, a, a * 7.0]))  # a scaled copy has the same direction
    idx, _ = nearest_neighbours(feature_vectors(a[None]), refs, 3)
    assert idx.tolist() == [[1, 3, 4]]
    idx, _ = nearest_neighbours(feature_vectors(a[None]), refs, 7)  # more neighbours than references
    assert idx[0, :3].tolist() == [1, 3, 4] and idx[0, 5:].tolist() == [-1, -1]


def test_vote_majority_and_ties():
    labels = np.array([[2, 1, 1], [0, 1, 2], [3, 0, 0], [1, 2, 2], [1, 2, 1]])
    # 1 has two votes; three one-vote classes -> the nearest (0); 0 has two; 2 has two; 1 has two.
    assert knn_vote(labels).tolist() == [1, 0, 0, 2, 1]
    assert knn_vote(np.array([[2, 3, 3, 2]])).tolist() == [2]  # 2 and 3 tie: 2 is nearer
    assert knn_vote(np.array([[4, -1, -1]])).tolist() == [4]  # missing neighbours do not vote


# ------------------------------------------------------------------------------------------ whole datasets
def write_folder(root: Path, recordings: dict[str, dict[str, list[np.ndarray]]]) -> None:
    """``root/<split>/<class>/<i>.npy``."""
    for split, classes in recordings.items():
        for name, events in classes.items():
            for i, ev in enumerate(events):
                write_events(root / split / name / f"{i:03d}.npy", ev)


def folder_config(tmp_path: Path, root: Path, sensor, **train) -> Path:
    cfg = {"dataset": {"name": "folder", "root": str(root), "sensor_size": list(sensor)}, "train": train}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_classes_that_differ_only_in_where_events_are_are_all_found(tmp_path):
    rng = np.random.default_rng(4)

    def make(xs, n):
        return [random_events(rng, 400, xs, (0, 34)) for _ in range(n)]

    write_folder(tmp_path / "d", {
        "train": {"left": make((0, 17), 12), "right": make((17, 34), 12)},
        "test": {"left": make((0, 17), 7), "right": make((17, 34), 5)},
    })
    cfg = load_config(folder_config(tmp_path, tmp_path / "d", (34, 34, 2)))
    rec = run_baseline(cfg, BaselineOptions(progress=False))
    assert rec["accuracy"] == 1.0 and rec["correct"] == 12 and rec["n_samples"] == 12
    assert rec["chance"] == pytest.approx(7 / 12) and rec["rows"][0]["majority_class"] == "left"  # 12:12 -> first
    assert rec["selected_on"] == "defaults" and rec["settings"]["cell"] == 3


def test_identical_recordings_of_two_classes_tie_deterministically(tmp_path):
    rng = np.random.default_rng(5)
    same = random_events(rng, 300, (0, 16), (0, 16))
    other = random_events(rng, 300, (0, 16), (0, 16))
    write_folder(tmp_path / "d", {"train": {"a": [same, other], "b": [same]}, "test": {"a": [same], "b": [same]}})
    cfg = load_config(folder_config(tmp_path, tmp_path / "d", (16, 16, 2)))
    for _ in range(2):
        rec = run_baseline(cfg, BaselineOptions(progress=False))
        # Both queries equal a's first recording and b's only one: the first reference (class a) wins.
        assert rec["rows"][0]["per_class_accuracy"] == {"a": 1.0, "b": 0.0}


def test_spike_recordings(tmp_path):
    # 1-D spike data, 48 channels x 2 polarities: class "low" fires on channels 0-23 early then 24-47,
    # class "high" the other way round; the same channels overall, so only time bins tell them apart.
    rng = np.random.default_rng(6)

    def rec(first):
        a = make_events(
            rng.integers(*first, 200), np.zeros(200), np.sort(rng.integers(0, 50_000, 200)), rng.integers(0, 2, 200)
        )
        second = (24, 48) if first == (0, 24) else (0, 24)
        b = make_events(
            rng.integers(*second, 200),
            np.zeros(200),
            np.sort(rng.integers(50_000, 100_000, 200)),
            rng.integers(0, 2, 200),
        )
        return np.concatenate([a, b])

    write_folder(
        tmp_path / "d",
        {
            "train": {"high": [rec((24, 48)) for _ in range(6)], "low": [rec((0, 24)) for _ in range(6)]},
            "test": {"high": [rec((24, 48)) for _ in range(4)], "low": [rec((0, 24)) for _ in range(4)]},
        },
    )
    cfg = load_config(folder_config(tmp_path, tmp_path / "d", (48, 1, 2)))
    rec_ = run_baseline(cfg, BaselineOptions(progress=False))
    assert rec_["accuracy"] == 1.0
    assert rec_["settings"]["describe"].startswith("1-channel groups (48), 4 time bins")
    one_bin = run_baseline(cfg, BaselineOptions(time_bins=1, progress=False))
    assert one_bin["accuracy"] < 1.0  # without time slices the two classes look alike


SYNTH = [
    "--config",
    "synthetic",
    "dataset.n_samples.train=30",
    "dataset.n_samples.test=15",
    "dataset.sensor_size=[32,32,2]",
    "dataset.duration_us=40000",
    "--no-progress",
]


def test_cli_on_tiny_synthetic_data(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["baseline", *SYNTH, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no validation split" in text and "chance (majority class)" in text
    rec = json.loads(out.read_text())
    assert rec["dataset"] == "synthetic" and rec["n_samples"] == 15 and 0 <= rec["accuracy"] <= 1
    assert rec["chance"] == pytest.approx(3 / 15)  # five balanced classes
    assert rec["settings"]["cell"] == 2 and rec["settings"]["k"] == 1 and "machine" in rec
    # Fixed settings by option.
    assert (
        main(["baseline", *SYNTH, "--k", "3", "--cell", "8", "--time-bins", "2", "--no-sqrt", "--json", str(out)]) == 0
    )
    rec = json.loads(out.read_text())
    assert rec["settings"] | {"describe": None} == {
        "cell": 8,
        "time_bins": 2,
        "sqrt": False,
        "k": 3,
        "grid": [4, 4],
        "describe": None,
    }


def test_settings_are_chosen_on_validation_never_on_test(tmp_path, capsys):
    records = []
    for n_test in (10, 15):
        out = tmp_path / f"{n_test}.json"
        argv = [a if not a.startswith("dataset.n_samples.test") else f"dataset.n_samples.test={n_test}" for a in SYNTH]
        assert main(["baseline", *argv, "train.val_fraction=0.3", "--k", "1", "--json", str(out)]) == 0
        records.append(json.loads(out.read_text()))
    a, b = records
    assert a["selected_on"] == "validation" and [r["split"] for r in a["rows"]] == ["val", "test"]
    assert a["rows"][0]["n_samples"] == 10 and a["rows"][0]["n_reference"] == 20  # 30 % of each class held out
    assert a["rows"][1]["n_reference"] == 30  # the whole train split answers the test queries
    assert len(a["selection"]) == 3 * 4 * 2  # cells x time bins x sqrt, k fixed
    # Another test set changes nothing that was chosen.
    assert a["selection"] == b["selection"] and a["settings"] == b["settings"]
    assert "chosen on the validation split" in capsys.readouterr().out


def test_validation_hold_out_is_the_one_training_uses(tmp_path):
    cfg = load_config("synthetic", ["dataset.n_samples.train=40", "dataset.n_samples.test=5", "train.val_fraction=0.25",
                                    f"cache_dir={tmp_path}", "train.preprocess_workers=1"])
    from evmamba.training.data import build_data

    data = build_data(cfg, progress=False)
    parts = recording_splits(cfg)
    val = data.val
    if not hasattr(val, "indices"):  # a surface embedding wraps the held-out subset (WithSurfaces)
        val = val.dataset
    cache = val.dataset
    assert [cache.source(int(i)) for i in val.indices] == [
        parts["val"].dataset.source(int(i)) for i in parts["val"].indices
    ]
    assert len(parts["train"].indices) + len(parts["val"].indices) == 40


def test_errors_are_reported(tmp_path, capsys):
    assert main(["baseline", *SYNTH, "--k", "0"]) == 1
    assert "--k must be a positive integer" in capsys.readouterr().err
    assert main(["baseline", *SYNTH, "--max-memory-gb", "0.000001"]) == 1
    assert "--max-memory-gb" in capsys.readouterr().err
    assert main(["baseline", "--config", "no_such_config"]) == 1
    assert "no_such_config" in capsys.readouterr().err
