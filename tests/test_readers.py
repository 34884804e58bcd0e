"""Event-file readers on the real recordings in data_root(): counts, ranges, order, format detection,
agreement between formats, round trips and clear errors for bad files.

These tests need the staged data folder and fail (they do not skip) when it is missing.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from evmamba.core.events import EVENT_DTYPE, make_events
from evmamba.datasets.paths import require_data
from evmamba.pipeline.readers import (
    detect_format,
    read_aedat2_dvs128,
    read_aedat4,
    read_events,
    read_hdf5_events,
    read_kaer_td,
    read_nmnist_bin,
    read_numpy,
    read_prophesee_dat,
    read_prophesee_evt2,
    read_prophesee_evt3,
    write_events,
)

# file under format_samples/, reader, format name, events, sensor size (None: inferred, checked below),
# duration in seconds -- all from PROVENANCE.md.
FORMAT_SAMPLES = [
    ("tonic_test_data/sample_nmnist.bin", read_nmnist_bin, "nmnist_bin", 4325, (34, 34, 2), 0.311),
    ("tonic_test_data/sample.aedat4", read_aedat4, "aedat4", 111_954, (320, 240, 2), 0.59),
    ("aestream_example/davis.aedat4", read_aedat4, "aedat4", 117_667, (346, 260, 2), 0.13),
    ("tonic_test_data/sample_ncars.dat", read_prophesee_dat, "prophesee_dat", 2009, (78, 42, 2), 0.100),
    ("expelliarmus_sample_files/dat_test_NCARS.dat", read_prophesee_dat, "prophesee_dat", 4407, None, 0.100),
    ("expelliarmus_sample_files/evt2_sample.raw", read_prophesee_evt2, "evt2", 539_481, (640, 480, 2), 0.050),
    # EVT 3.0 durations per Prophesee's specification (8,801 and 45,210 µs first to last event); expelliarmus
    # 1.1 stretched them to 53,857 and 90,266 µs by miscounting time carries.
    ("expelliarmus_sample_files/evt3_sample.raw", read_prophesee_evt3, "evt3", 219_596, (1280, 720, 2), 0.008801),
    ("expelliarmus_sample_files/evt3_test_pedestrians.raw", read_prophesee_evt3, "evt3", 5000, (1280, 720, 2),
     0.045210),
    ("dvs128_aedat2_recordings/alex_walking_again.aedat", read_aedat2_dvs128, "aedat2_dvs128", 19_182, (128, 128, 2),
     6.9),
    ("dvs128_aedat2_recordings/neal_walking.aedat", read_aedat2_dvs128, "aedat2_dvs128", 70_304, (128, 128, 2), 9.2),
]


def sample_path(rel):
    return require_data("format_samples", rel)


def assert_valid_stream(ev, size):
    assert ev.dtype == EVENT_DTYPE and ev.ndim == 1
    assert (np.diff(ev["t"]) >= 0).all() and ev["t"][0] >= 0
    assert ev["x"].max() < size[0] and ev["y"].max() < size[1]
    assert set(np.unique(ev["p"]).tolist()) == {0, 1}  # both polarities, nothing else


@pytest.mark.parametrize("rel, reader, fmt, count, size, duration", FORMAT_SAMPLES, ids=[s[0] for s in FORMAT_SAMPLES])
def test_every_format_sample_reads_with_its_documented_content(rel, reader, fmt, count, size, duration):
    path = sample_path(rel)
    ev, got_size = reader(path)
    assert len(ev) == count
    if size is not None:
        assert got_size == size
    assert_valid_stream(ev, got_size)
    assert (ev["t"][-1] - ev["t"][0]) / 1e6 == pytest.approx(duration, rel=0.01)
    # read_events picks the same reader from the extension and header
    assert detect_format(path) == fmt
    ev2, size2 = read_events(path)
    assert size2 == got_size and np.array_equal(ev2, ev)


def test_prophesee_dat_without_geometry_infers_the_sensor_from_coordinates():
    ev, size = read_prophesee_dat(sample_path("expelliarmus_sample_files/dat_test_NCARS.dat"))
    assert size == (int(ev["x"].max()) + 1, int(ev["y"].max()) + 1, 2)
    # a given sensor size wins over inference, and events must fit it
    _, given = read_prophesee_dat(sample_path("expelliarmus_sample_files/dat_test_NCARS.dat"), (120, 100, 2))
    assert given == (120, 100, 2)


def test_nmnist_small_files_decode_like_tonic_and_match_provenance():
    import tonic  # the maintained reader, as a reference for our vectorised decoder

    folder = require_data("nmnist_small")
    for name in ("1.bs2", "500.bs2", "60001.bs2"):
        ours, size = read_nmnist_bin(folder / name)
        ref = tonic.io.read_mnist_file(str(folder / name), dtype=tonic.datasets.NMNIST.dtype)
        assert size == (34, 34, 2)
        for field in "xytp":
            assert np.array_equal(ours[field].astype(np.int64), ref[field].astype(np.int64)), field
    counts, durations = [], []
    for path in sorted(folder.glob("*.bs2")):
        ev, size = read_events(path)
        assert size == (34, 34, 2) and ev["x"].max() <= 33 and ev["y"].max() <= 33
        assert (np.diff(ev["t"]) >= 0).all()
        counts.append(len(ev))
        durations.append((ev["t"][-1] - ev["t"][0]) / 1000)
    assert len(counts) == 1100
    assert (min(counts), int(np.median(counts)), max(counts)) == (1069, 4163, 7152)
    assert 290 <= min(durations) and max(durations) <= 315  # 291-314 ms


def test_dvsgesture_bs2_trials_are_128x128_with_documented_counts():
    folder = require_data("dvsgesture_slayer_bs2")
    expected = {1: 63_471, 2: 84_260, 3: 113_063, 4: 151_879, 5: 181_179,
                6: 124_244, 7: 159_617, 8: 101_288, 9: 141_773, 10: 85_936}
    for i, count in expected.items():
        ev, size = read_events(folder / f"{i}.bs2")
        assert len(ev) == count
        assert size == (128, 128, 2)  # too large for N-MNIST's 34x34: inferred from the coordinates
        assert_valid_stream(ev, size)
        assert ev["x"].max() == 127 and ev["y"].max() == 127
        assert (ev["t"][-1] - ev["t"][0]) / 1e6 == pytest.approx(1.45, abs=0.001)


def test_poker_aedat2_and_kaer_copies_hold_the_same_events_without_swapping_x_and_y():
    cards = require_data("poker_dvs", "Cards")
    td_files = sorted((cards / "usable" / "pips").glob("*_td.dat"))
    assert len(td_files) == 100
    for td in td_files:
        aedat = cards / "pips_aedat" / td.name.replace("_td.dat", ".aedat")
        a, a_size = read_aedat2_dvs128(aedat)
        k, _ = read_kaer_td(td)
        assert detect_format(td) == "kaer_td" and detect_format(aedat) == "aedat2_dvs128"
        assert a_size == (128, 128, 2)
        assert len(a) == len(k)
        # kAER stores x and y in separate bit fields, so equality here rules out a swap in the AEDAT decoder
        assert np.array_equal(a["x"], k["x"]) and np.array_equal(a["y"], k["y"])
        assert np.array_equal(a["p"], k["p"])
        assert np.array_equal(a["t"] - a["t"][0], k["t"])  # the kAER copies start their clock at 0


def test_all_poker_recordings_match_provenance():
    cards = require_data("poker_dvs", "Cards")
    files = sorted(cards.glob("*pips_aedat/*.aedat"))
    assert len(files) == 131
    counts, durations = [], []
    for f in files:
        ev, _ = read_aedat2_dvs128(f, (35, 35, 2))
        counts.append(len(ev))
        durations.append((ev["t"][-1] - ev["t"][0]) / 1000)
        assert ev["x"].max() <= 32 and ev["y"].max() <= 34
    assert (min(counts), int(np.median(counts)), max(counts)) == (369, 2512, 5387)
    assert 4.6 <= min(durations) and max(durations) <= 31.8  # 4.7-31.7 ms


def write_dvs128_aedat2(path, x, y, t, on, special=()):
    """An AEDAT 2.0 file in jAER's DVS128 layout: address = y << 8 | x << 1 | OFF bit, big-endian (a, t) pairs;
    the indices in ``special`` get bit 15 (external input events, not pixels)."""
    a = (np.asarray(y, np.int64) << 8) | (np.asarray(x, np.int64) << 1) | (1 - np.asarray(on, np.int64))
    a[list(special)] |= 1 << 15
    rec = np.empty(len(a), dtype=[("a", ">u4"), ("t", ">u4")])
    rec["a"], rec["t"] = a, t
    head = b"#!AER-DAT2.0\r\n# AEChip: ch.unizh.ini.jaer.chip.retina.DVS128\r\n"
    path.write_bytes(head + rec.tobytes())
    return path


def test_flip_x_mirrors_a_hand_made_dvs128_file_as_jaer_does(tmp_path):
    x, y, t, on = [0, 5, 64, 127, 9], [0, 127, 3, 60, 9], [10, 20, 30, 40, 50], [1, 0, 1, 0, 1]
    path = write_dvs128_aedat2(tmp_path / "hand.aedat", x, y, t, on, special=[4])
    plain, size = read_events(path)
    assert size == (128, 128, 2)
    assert plain["x"].tolist() == [0, 5, 64, 127] and plain["y"].tolist() == [0, 127, 3, 60]
    jaer, size = read_events(path, flip_x=True)
    assert size == (128, 128, 2)
    assert jaer["x"].tolist() == [127, 122, 63, 0]  # jAER: x = 127 - field
    for field in "ytp":
        assert np.array_equal(jaer[field], plain[field])
    assert jaer["p"].tolist() == [1, 0, 1, 0] and jaer["t"].tolist() == [10, 20, 30, 40]


def test_flip_x_on_a_poker_dvs_recording(tmp_path):
    path = require_data("poker_dvs", "Cards", "pips_aedat", "cl_60.aedat")
    plain, _ = read_aedat2_dvs128(path)
    jaer, size = read_aedat2_dvs128(path, flip_x=True)
    assert size == (128, 128, 2)
    assert np.array_equal(jaer["x"].astype(int), 127 - plain["x"].astype(int))
    for field in "ytp":
        assert np.array_equal(jaer[field], plain[field])
    # the 32x32 crop sits in the left columns of the array; mirrored, it sits in the right ones
    assert plain["x"].max() <= 32 and jaer["x"].min() >= 95
    assert np.array_equal(read_events(path, flip_x=True)[0], jaer)
    # so the 35x35 frame used for the crop cannot hold the mirrored events
    with pytest.raises(ValueError, match=r"cl_60\.aedat.*field 'x' has value 1\d\d .*outside the sensor size"):
        read_events(path, (35, 35, 2), flip_x=True)


def test_flip_x_is_refused_for_other_formats_and_non_bools():
    path = sample_path("tonic_test_data/sample_nmnist.bin")
    with pytest.raises(ValueError, match=r"sample_nmnist\.bin.*flip_x.*'aedat2_dvs128'.*'nmnist_bin'"):
        read_events(path, flip_x=True)
    assert read_events(path, flip_x=False)[0].size == 4325
    with pytest.raises(TypeError, match=r"flip_x must be True or False; got 'yes'"):
        read_events(path, flip_x="yes")
    with pytest.raises(TypeError, match=r"flip_x must be True or False; got 1"):
        read_aedat2_dvs128(sample_path("dvs128_aedat2_recordings/alex_walking_again.aedat"), flip_x=1)


def test_aedat_extension_is_dispatched_by_header(tmp_path):
    src = sample_path("tonic_test_data/sample.aedat4")
    renamed = tmp_path / "sample.aedat"  # AEDAT 4 content under the AEDAT 2 extension
    shutil.copyfile(src, renamed)
    assert detect_format(renamed) == "aedat4"
    ev, size = read_events(renamed)
    assert len(ev) == 111_954 and size == (320, 240, 2)


# -- round trips -------------------------------------------------------------------------------------------


def some_events(n=500, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 1_000_000, n))
    return make_events(rng.integers(0, 40, n), rng.integers(0, 30, n), t, rng.integers(0, 2, n))


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".h5", ".hdf5"])
@pytest.mark.parametrize("compress", [False, True])
def test_write_read_round_trip(tmp_path, suffix, compress):
    ev = some_events()
    path = write_events(tmp_path / f"ev{suffix}", ev, (64, 48, 2), compress=compress)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ev{suffix}"]  # no temp file left behind
    back, size = read_events(path)
    assert np.array_equal(back, ev) and back.dtype == EVENT_DTYPE
    if suffix == ".npy":  # .npy stores no sensor size: it is inferred
        assert size == (int(ev["x"].max()) + 1, int(ev["y"].max()) + 1, 2)
    else:
        assert size == (64, 48, 2)


def test_real_recording_round_trips_through_every_array_format(tmp_path):
    ev, size = read_events(sample_path("expelliarmus_sample_files/evt3_test_pedestrians.raw"))
    for suffix in (".npz", ".h5"):
        back, back_size = read_events(write_events(tmp_path / f"p{suffix}", ev, size))
        assert np.array_equal(back, ev) and back_size == size


def test_array_layouts_with_other_dtypes_and_conventions(tmp_path):
    ev = some_events(100)
    # separate arrays, int64 coordinates, -1/+1 polarity
    np.savez(tmp_path / "sep.npz", x=ev["x"].astype(np.int64), y=ev["y"].astype(np.int32),
             t=ev["t"], p=np.where(ev["p"] == 1, 1, -1), sensor_size=np.array([40, 30, 2]))
    back, size = read_numpy(tmp_path / "sep.npz")
    assert np.array_equal(back, ev) and size == (40, 30, 2)
    # tonic-like structured dtype (other field order, bool polarity)
    tonic_like = np.empty(100, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "?")])
    for f in "txy":
        tonic_like[f] = ev[f]
    tonic_like["p"] = ev["p"].astype(bool)
    np.save(tmp_path / "tonic.npy", tonic_like)
    assert np.array_equal(read_numpy(tmp_path / "tonic.npy")[0], ev)
    # DSEC-like HDF5: events/x, events/y, events/t, events/p plus width/height attributes
    with h5py.File(tmp_path / "dsec.h5", "w") as fh:
        g = fh.create_group("events")
        for f in "xytp":
            g.create_dataset(f, data=ev[f])
        fh.attrs["width"], fh.attrs["height"] = 640, 480
    back, size = read_hdf5_events(tmp_path / "dsec.h5")
    assert np.array_equal(back, ev) and size == (640, 480, 2)


# -- validation at the boundary ----------------------------------------------------------------------------


def test_unsorted_timestamps_raise_or_are_sorted_on_request(tmp_path):
    ev = some_events(50)
    swapped = ev.copy()
    swapped[[10, 11]] = swapped[[11, 10]]
    swapped["t"][10] = swapped["t"][11] + 5  # a small reordering, as some cameras write
    path = tmp_path / "unsorted.npz"
    np.savez(path, events=swapped)
    with pytest.raises(ValueError, match=r"unsorted\.npz.*field 't' is not sorted.*on_unsorted='sort'"):
        read_events(path)
    fixed, _ = read_events(path, on_unsorted="sort")
    assert (np.diff(fixed["t"]) >= 0).all() and len(fixed) == 50
    assert np.array_equal(np.sort(fixed["t"]), np.sort(swapped["t"]))
    with pytest.raises(ValueError, match="on_unsorted"):
        read_events(path, on_unsorted="ignore")


@pytest.mark.parametrize(
    "field, value, error, pattern",
    [
        ("x", 70, ValueError, r"field 'x' has value 70 .*outside the sensor size"),
        ("t", -5, ValueError, r"field 't' has a negative timestamp"),
        ("p", 3, ValueError, r"field 'p' has value 3"),
    ],
)
def test_bad_values_name_the_file_and_field(tmp_path, field, value, error, pattern):
    ev = some_events(20)
    fields = {f: ev[f].astype(np.int64) for f in "xytp"}
    fields[field][0] = value
    path = tmp_path / "bad.npz"
    np.savez(path, sensor_size=np.array([64, 48, 2]), **fields)
    with pytest.raises(error, match=pattern) as info:
        read_events(path)
    assert str(path) in str(info.value)


def test_events_outside_a_given_sensor_size_are_refused():
    path = sample_path("dvs128_aedat2_recordings/alex_walking_again.aedat")
    with pytest.raises(ValueError, match=r"alex_walking_again\.aedat.*field 'x'.*outside the sensor size"):
        read_events(path, sensor_size=(64, 64, 2))


def test_wrong_dtypes_and_empty_streams(tmp_path):
    ev = some_events(10)
    np.savez(tmp_path / "float_t.npz", x=ev["x"], y=ev["y"], t=ev["t"] / 1e6, p=ev["p"])
    with pytest.raises(TypeError, match=r"float_t\.npz.*field 't' has dtype float64"):
        read_events(tmp_path / "float_t.npz")
    np.save(tmp_path / "plain.npy", np.zeros((10, 4), dtype=np.int64))
    with pytest.raises(TypeError, match=r"plain\.npy.*structured array"):
        read_events(tmp_path / "plain.npy")
    empty = write_events(tmp_path / "empty.npz", ev[:0], (8, 8, 2))
    with pytest.raises(ValueError, match=r"empty\.npz.*no events.*allow_empty"):
        read_events(empty)
    got, size = read_events(empty, allow_empty=True)
    assert got.size == 0 and size == (8, 8, 2)
    with pytest.raises(TypeError, match="dtype"):
        write_events(tmp_path / "wrong.npy", np.zeros(3, dtype=[("x", "i4")]))
    with pytest.raises(ValueError, match=r"\.csv"):
        write_events(tmp_path / "events.csv", ev)


# -- corrupt, truncated and foreign files ------------------------------------------------------------------

TRUNCATABLE = [
    ("tonic_test_data/sample_nmnist.bin", read_nmnist_bin, 2),
    ("dvs128_aedat2_recordings/alex_walking_again.aedat", read_aedat2_dvs128, 3),
    ("tonic_test_data/sample.aedat4", read_aedat4, 20_000),  # into the packets, past the trailing index
    ("expelliarmus_sample_files/evt2_sample.raw", read_prophesee_evt2, 1),
    ("expelliarmus_sample_files/evt3_sample.raw", read_prophesee_evt3, 1),
    ("expelliarmus_sample_files/dat_test_NCARS.dat", read_prophesee_dat, 3),
]


@pytest.mark.parametrize("rel, reader, cut", TRUNCATABLE, ids=[t[0] for t in TRUNCATABLE])
def test_truncated_files_raise_value_error_naming_the_file(tmp_path, rel, reader, cut):
    src = sample_path(rel)
    data = src.read_bytes()
    path = tmp_path / ("cut_" + src.name)
    path.write_bytes(data[:-cut])
    with pytest.raises(ValueError, match="truncated") as info:
        reader(path)
    assert str(path) in str(info.value)


def test_truncated_kaer_and_array_files(tmp_path):
    td = require_data("poker_dvs", "Cards", "usable", "pips", "cl_60_td.dat")
    cut = tmp_path / "cl_60_td.dat"
    cut.write_bytes(td.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"cl_60_td\.dat.*truncated"):
        read_events(cut)
    for suffix in (".npy", ".npz", ".h5"):
        full = write_events(tmp_path / f"full{suffix}", some_events(), (64, 48, 2))
        half = tmp_path / f"half{suffix}"
        half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        with pytest.raises(ValueError) as info:
            read_events(half)
        assert str(half) in str(info.value)


def test_prophesee_header_without_end_is_refused_rather_than_hanging(tmp_path):
    path = tmp_path / "stub.raw"
    path.write_bytes(b"% evt 2.0")  # a header line cut before its newline
    with pytest.raises(ValueError, match=r"stub\.raw.*header"):
        read_events(path)


def test_foreign_files_raise_value_error_naming_the_file(tmp_path):
    bs2 = require_data("nmnist_small", "1.bs2").read_bytes()
    evt2 = sample_path("expelliarmus_sample_files/evt2_sample.raw")
    ncars = sample_path("tonic_test_data/sample_ncars.dat")
    cases = []
    for name, reader in [
        ("nmnist_as.aedat", read_aedat2_dvs128),
        ("nmnist_as.aedat4", read_aedat4),
        ("nmnist_as.raw", read_prophesee_evt3),
        ("nmnist_as.dat", read_prophesee_dat),
        ("nmnist_as.npy", read_numpy),
        ("nmnist_as.h5", read_hdf5_events),
    ]:
        path = tmp_path / name
        path.write_bytes(bs2)
        cases.append((path, reader))
    cases.append((evt2, read_prophesee_evt3))  # header says EVT 2.0
    cases.append((ncars, read_kaer_td))  # a Prophesee DAT is not a header-less kAER file
    cases.append((sample_path("tonic_test_data/sample.aedat4"), read_nmnist_bin))
    cases.append((sample_path("tonic_test_data/sample.aedat4"), read_aedat2_dvs128))
    for path, reader in cases:
        with pytest.raises(ValueError) as info:
            reader(path)
        assert str(path) in str(info.value), (path, reader.__name__)


def test_aedat2_from_another_chip_is_refused(tmp_path):
    src = sample_path("dvs128_aedat2_recordings/alex_walking_again.aedat").read_bytes()
    path = tmp_path / "davis.aedat"
    path.write_bytes(src.replace(b"chip.retina.DVS128", b"chip.DAVIS240Cxx", 1))
    with pytest.raises(ValueError, match=r"davis\.aedat.*AEChip.*not a DVS128"):
        read_events(path)


def test_unknown_extension_and_missing_file(tmp_path):
    path = tmp_path / "events.txt"
    path.write_text("1 2 3 4\n")
    with pytest.raises(ValueError, match=r"events\.txt.*unknown event-file extension"):
        read_events(path)
    with pytest.raises(ValueError, match="unknown format"):
        read_events(path, format="csv")
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        read_events(tmp_path / "nothing_here.npy")
    with pytest.raises(TypeError, match="path"):
        read_events(42)
