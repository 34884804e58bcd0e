"""Datasets: the staged real recordings (sizes, labels, splits from PROVENANCE.md), custom folders, the
config registry, and tonic's datasets (missing-file errors and small fake layouts; the full datasets are
not on this machine).

The tests on real recordings fail (they do not skip) when the data folder is missing.
"""

from __future__ import annotations

import csv
import os
import pickle
import re
import urllib.error

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

from evmamba.core.events import EVENT_DTYPE, make_events
from evmamba.datasets.folder import FolderDataset
from evmamba.datasets.local import POKER_SPLIT_FILES, DVSGestureSamples, NMNISTSmall, PokerDVS
from evmamba.datasets.paths import require_data
from evmamba.datasets.registry import DATASET_NAMES, build_dataset
from evmamba.datasets.tonic_datasets import (
    DatasetFilesMissingError,
    TonicCIFAR10DVS,
    TonicDVSGesture,
    TonicNCaltech101,
    TonicNMNIST,
    TonicPokerDVS,
    TonicSHD,
    TonicSSC,
)
from evmamba.pipeline.events import validate_events
from evmamba.pipeline.readers import read_events, read_nmnist_bin, write_events


def stems(dataset):
    return {os.path.basename(dataset.source(i)) for i in range(len(dataset))}


# -- N-MNIST subset ------------------------------------------------------------------------------------------


def test_nmnist_small_sizes_class_counts_and_first_labels():
    train, test = NMNISTSmall("train"), NMNISTSmall("test")
    assert (len(train), len(test)) == (1000, 100)
    assert train.class_counts().tolist() == [97, 116, 99, 93, 105, 92, 94, 117, 87, 100]
    assert test.class_counts().tolist() == [8, 14, 8, 11, 14, 7, 10, 15, 2, 11]
    assert train.labels[:5] == [5, 0, 4, 1, 9] and test.labels[:5] == [7, 2, 1, 0, 4]  # MNIST order
    assert train.sensor_size == (34, 34, 2) and train.classes == [str(d) for d in range(10)]
    events, label = train[0]
    assert label == 5 and train.source(0).endswith("1.bs2") and test.source(-1).endswith("60100.bs2")
    validate_events(events, train.sensor_size)
    assert events.dtype == EVENT_DTYPE and len(events) == 4681


def test_nmnist_small_rejects_a_bad_split_and_index():
    with pytest.raises(ValueError, match="split must be one of"):
        NMNISTSmall("valid")
    with pytest.raises(IndexError, match="out of range"):
        NMNISTSmall("test")[100]


# -- POKER-DVS ----------------------------------------------------------------------------------------------


def test_poker_dvs_all_131_with_labels_from_file_names():
    ds = PokerDVS("all")
    assert len(ds) == 131 and ds.classes == ["club", "heart", "diamond", "spade"]  # tonic's order cl, he, di, sp
    counts = dict(zip(ds.classes, ds.class_counts().tolist()))
    assert counts == {"club": 30, "diamond": 43, "heart": 23, "spade": 35}
    by_prefix = {"cl": "club", "xclub": "club", "he": "heart", "di": "diamond", "xdiamond": "diamond",
                 "sp": "spade", "xspade": "spade"}
    for i in range(len(ds)):
        name = os.path.basename(ds.source(i))
        prefix = re.match(r"xclub|xdiamond|xspade|cl|he|di|sp", name).group(0)
        assert ds.classes[ds.labels[i]] == by_prefix[prefix], name
    upright = PokerDVS("all", include_inverted=False)
    assert len(upright) == 100 and not any(s.startswith("x") for s in stems(upright))
    events, label = ds[0]
    validate_events(events, (35, 35, 2))
    assert ds.sensor_size == (35, 35, 2)


def test_poker_dvs_hots_split_files():
    for split_file in POKER_SPLIT_FILES[:5]:
        parts = {s: PokerDVS(s, split_file=split_file) for s in ("learn", "train", "test")}
        assert [len(parts[s]) for s in ("learn", "train", "test")] == [13, 19, 68]
        names = [stems(parts[s]) for s in ("learn", "train", "test")]
        assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
        assert len(names[0] | names[1] | names[2]) == 100
        assert parts["learn"].class_counts().tolist() == [2, 3, 5, 3]  # club, heart, diamond, spade
    newstart = {s: PokerDVS(s, split_file="pokerDVSnewstart.db") for s in ("train", "test")}
    assert (len(newstart["train"]), len(newstart["test"])) == (20, 80)
    with pytest.raises(ValueError, match="no 'learn' rows"):
        PokerDVS("learn", split_file="pokerDVSnewstart.db")
    with pytest.raises(ValueError, match="include_inverted=False"):
        PokerDVS("train", split_file="pokerDVS_1.db", include_inverted=True)
    with pytest.raises(FileNotFoundError, match="pokerDVS_9.db"):
        PokerDVS("train", split_file="pokerDVS_9.db")


def test_poker_dvs_k_fold_is_stratified_disjoint_and_deterministic():
    all_names = stems(PokerDVS("all"))
    tests = [PokerDVS("test", fold=i, n_folds=5) for i in range(5)]
    seen = set()
    for i, test in enumerate(tests):
        train = PokerDVS("train", fold=i, n_folds=5)
        assert not (stems(train) & stems(test)) and stems(train) | stems(test) == all_names
        assert not (seen & stems(test))
        seen |= stems(test)
        # every class contributes a fifth of its recordings (rounded) to each test fold
        assert np.all(np.abs(test.class_counts() - np.array([30, 23, 43, 35]) / 5) < 1)
    assert seen == all_names
    assert [d.paths for d in tests] == [PokerDVS("test", fold=i, n_folds=5).paths for i in range(5)]
    assert PokerDVS("test", fold=0, n_folds=5, seed=1).paths != tests[0].paths
    with pytest.raises(ValueError, match="fold must be"):
        PokerDVS("test", fold=5, n_folds=5)
    with pytest.raises(ValueError, match="either split_file or fold"):
        PokerDVS("test", fold=0, n_folds=5, split_file="pokerDVS_1.db", include_inverted=False)


def test_poker_dvs_default_train_test_split_covers_everything_once():
    train, test = build_dataset({"name": "poker_dvs"}, "train"), build_dataset({"name": "poker_dvs"}, "test")
    assert len(train) + len(test) == 131 and not (stems(train) & stems(test))
    assert (test.class_counts() > 0).all()


# -- DVS Gesture samples --------------------------------------------------------------------------------------


def test_dvsgesture_samples_labels_and_counts():
    ds = DVSGestureSamples()
    assert len(ds) == 10 and ds.labels == list(range(10)) and len(ds.classes) == 11
    expected = [63_471, 84_260, 113_063, 151_879, 181_179, 124_244, 159_617, 101_288, 141_773, 85_936]
    for i, count in enumerate(expected):
        events, label = ds[i]
        assert len(events) == count and label == i and ds.source(i).endswith(f"{i + 1}.bs2")
    assert ds.sensor_size == (128, 128, 2)


# -- custom folders ---------------------------------------------------------------------------------------------


def make_recording(seed, width, height, n=200):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, width, n), rng.integers(0, height, n)
    x[0], y[0] = width - 1, height - 1  # reach the corner, so the inferred size is exact
    return make_events(x, y, np.sort(rng.integers(0, 50_000, n)), rng.integers(0, 2, n))


def test_folder_dataset_with_class_subfolders_infers_the_sensor_size(tmp_path):
    for c, cls in enumerate(["cat", "ant", "bee"]):
        for k in range(2 + c):
            write_events(tmp_path / cls / f"r{k}.npy", make_recording(10 * c + k, 20 + 5 * c, 16))
    (tmp_path / "README.txt").write_text("not an event file")
    ds = FolderDataset(tmp_path)
    assert ds.classes == ["ant", "bee", "cat"] and len(ds) == 9
    assert ds.class_counts().tolist() == [3, 4, 2]
    assert ds.sensor_size == (30, 16, 2)  # the largest recording (bee: 30 wide) sets it
    events, label = ds[0]
    assert label == 0 and ds.source(0).endswith("ant/r0.npy")
    assert np.array_equal(events, make_recording(10, 25, 16))
    given = FolderDataset(tmp_path, sensor_size=(64, 64, 2))
    assert given.sensor_size == (64, 64, 2)
    with pytest.raises(ValueError, match=r"field 'x'.*outside the sensor size"):
        FolderDataset(tmp_path, sensor_size=(20, 16, 2))[0]  # an ant recording is 25 wide


def test_folder_dataset_with_split_subfolders(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            write_events(tmp_path / split / cls / "r.npz", make_recording(1, 8, 8), (8, 8, 2))
    assert len(FolderDataset(tmp_path, split="train")) == 2
    with pytest.raises(ValueError, match="pass split="):
        FolderDataset(tmp_path)
    with pytest.raises(ValueError, match="valid"):
        FolderDataset(tmp_path, split="valid")


def test_folder_dataset_with_a_labels_csv_of_real_recordings(tmp_path):
    cards = require_data("poker_dvs", "Cards", "pips_aedat")
    chosen = ["cl_60.aedat", "he_96.aedat", "di_29.aedat", "sp_80.aedat"]
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "split"])
        for k, name in enumerate(chosen):
            w.writerow([str(cards / name), name[:2], "test" if k == 3 else "train"])
    ds = FolderDataset(tmp_path, labels_csv="labels.csv", sensor_size=(35, 35, 2))
    assert ds.classes == ["cl", "di", "he", "sp"] and ds.labels == [0, 2, 1, 3]
    events, _ = ds[1]
    assert np.array_equal(events, read_events(cards / "he_96.aedat", (35, 35, 2))[0])
    assert len(FolderDataset(tmp_path, labels_csv="labels.csv", split="train", sensor_size=(35, 35, 2))) == 3
    inferred = FolderDataset(tmp_path, labels_csv=tmp_path / "labels.csv")
    assert inferred.sensor_size == (128, 128, 2)  # AEDAT 2 DVS128 files report the DVS128 sensor


def test_folder_dataset_csv_with_integer_labels_and_errors(tmp_path):
    for k in range(3):
        write_events(tmp_path / f"s{k}.npz", make_recording(k, 10, 10), (10, 10, 2))
    (tmp_path / "ok.csv").write_text("file,label\ns0.npz,2\ns1.npz,0\ns2.npz,2\n")
    ds = FolderDataset(tmp_path, labels_csv="ok.csv")
    assert ds.classes == ["0", "1", "2"] and ds.labels == [2, 0, 2] and ds.sensor_size == (10, 10, 2)
    (tmp_path / "cols.csv").write_text("path,class\ns0.npz,1\n")
    with pytest.raises(ValueError, match=r"cols\.csv: missing column\(s\) \['file', 'label'\]"):
        FolderDataset(tmp_path, labels_csv="cols.csv")
    (tmp_path / "missing.csv").write_text("file,label\ns0.npz,1\ngone.npz,1\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.csv:3: file .*gone\.npz"):
        FolderDataset(tmp_path, labels_csv="missing.csv")
    (tmp_path / "twice.csv").write_text("file,label\ns0.npz,1\ns0.npz,1\n")
    with pytest.raises(ValueError, match=r"twice\.csv:3: .*already listed"):
        FolderDataset(tmp_path, labels_csv="twice.csv")
    with pytest.raises(ValueError, match="'split' column"):
        FolderDataset(tmp_path, labels_csv="ok.csv", split="train")
    (tmp_path / "empty" / "some_class").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"empty: no event files"):
        FolderDataset(tmp_path / "empty")


def test_folder_without_splits_holds_out_a_share_of_every_class(tmp_path):
    sizes = {"ant": 10, "bee": 5, "cat": 1}
    for cls, n in sizes.items():
        for k in range(n):
            write_events(tmp_path / "flat" / cls / f"r{k}.npy", make_recording(k, 8, 8))
    with pytest.raises(ValueError, match="or set dataset.test_fraction"):
        FolderDataset(tmp_path / "flat", split="train")
    train = FolderDataset(tmp_path / "flat", split="train", test_fraction=0.2, seed=1)
    test = FolderDataset(tmp_path / "flat", split="test", test_fraction=0.2, seed=1)
    # round(n_c * 0.2) of every class: 2 ants, 1 bee, no cat; every file in exactly one split
    assert test.class_counts().tolist() == [2, 1, 0] and train.class_counts().tolist() == [8, 4, 1]
    assert sorted(train.paths + test.paths) == sorted(FolderDataset(tmp_path / "flat").paths)
    assert train.classes == test.classes == ["ant", "bee", "cat"] and test.split == "test"
    # the same files whatever the seed's run or the folder's location; another seed, other files
    moved = tmp_path / "moved"
    (tmp_path / "flat").rename(moved)
    again = FolderDataset(moved, split="test", test_fraction=0.2, seed=1)
    assert [p.relative_to(moved) for p in again.paths] == [p.relative_to(tmp_path / "flat") for p in test.paths]
    assert FolderDataset(moved, split="test", test_fraction=0.2, seed=2).paths != again.paths
    # a CSV without a split column works the same way
    (moved / "labels.csv").write_text("file,label\n" + "".join(f"ant/r{k}.npy,ant\n" for k in range(10)))
    assert len(FolderDataset(moved, labels_csv="labels.csv", split="test", test_fraction=0.3)) == 3
    with pytest.raises(ValueError, match="holds out no recording"):
        FolderDataset(moved, split="test", test_fraction=0.01)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        FolderDataset(moved, split="test", test_fraction=1.0)
    with pytest.raises(ValueError, match="splits are 'train', 'test' and 'all'"):
        FolderDataset(moved, split="valid", test_fraction=0.2)
    # a folder that has its own splits refuses a hold-out
    for split in ("train", "test"):
        write_events(tmp_path / "split" / split / "a" / "r.npy", make_recording(1, 8, 8))
    with pytest.raises(ValueError, match="remove dataset.test_fraction"):
        FolderDataset(tmp_path / "split", split="train", test_fraction=0.2)


def test_folder_classes_are_decided_over_every_split(tmp_path):
    # train/ has an empty class folder and test/ lacks class "b": both splits still share a, b, c.
    for split, classes in (("train", ("a", "b")), ("test", ("a", "c"))):
        for cls in classes:
            write_events(tmp_path / split / cls / "r.npy", make_recording(1, 8, 8))
    (tmp_path / "train" / "c").mkdir()
    train, test = FolderDataset(tmp_path, split="train"), FolderDataset(tmp_path, split="test")
    assert train.classes == test.classes == ["a", "b", "c"]
    assert train.labels == [0, 1] and test.labels == [0, 2]
    # The same from a CSV whose test rows lack a class.
    for k in range(4):
        write_events(tmp_path / "flat" / f"s{k}.npy", make_recording(k, 8, 8))
    (tmp_path / "flat" / "labels.csv").write_text(
        "file,label,split\ns0.npy,wave,train\ns1.npy,clap,train\ns2.npy,roll,train\ns3.npy,wave,test\n"
    )
    csv_test = FolderDataset(tmp_path / "flat", labels_csv="labels.csv", split="test")
    assert csv_test.classes == ["clap", "roll", "wave"] and csv_test.labels == [2]


def test_folder_labels_differing_only_in_case_are_one_class_with_a_warning(tmp_path):
    for k in range(4):
        write_events(tmp_path / f"s{k}.npy", make_recording(k, 8, 8))
    (tmp_path / "labels.csv").write_text(
        "file,label,split\ns0.npy,Wave,train\ns1.npy,clap,train\ns2.npy,wave,test\ns3.npy,Clap,test\n"
    )
    with pytest.warns(UserWarning) as caught:
        test = FolderDataset(tmp_path, labels_csv="labels.csv", split="test")
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and "labels.csv" in messages[0]
    assert "['Clap', 'clap'] differ only in upper/lower case" in messages[0] and "'Clap'" in messages[0]
    assert "['Wave', 'wave'] differ only in upper/lower case" in messages[1]
    with pytest.warns(UserWarning, match="differ only in upper/lower case"):
        train = FolderDataset(tmp_path, labels_csv="labels.csv", split="train")
    assert train.classes == test.classes == ["Clap", "Wave"]
    assert train.labels == [1, 0] and test.labels == [1, 0]
    # Class folders too: train/Wave and test/wave are one class.
    write_events(tmp_path / "tree" / "train" / "Wave" / "r.npy", make_recording(1, 8, 8))
    write_events(tmp_path / "tree" / "test" / "wave" / "r.npy", make_recording(2, 8, 8))
    write_events(tmp_path / "tree" / "test" / "clap" / "r.npy", make_recording(3, 8, 8))
    with pytest.warns(UserWarning, match="differ only in upper/lower case"):
        tree_test = FolderDataset(tmp_path / "tree", split="test")
    assert tree_test.classes == ["Wave", "clap"] and tree_test.labels == [1, 0]


def test_folder_sensor_size_is_inferred_over_every_split_on_first_use(tmp_path):
    write_events(tmp_path / "train" / "a" / "r.npy", make_recording(1, 10, 6))
    write_events(tmp_path / "test" / "a" / "r.npy", make_recording(2, 30, 20))
    train = FolderDataset(tmp_path, split="train")
    assert train.sensor_size == FolderDataset(tmp_path, split="test").sensor_size == (30, 20, 2)
    assert train.declared_sensor_size is None
    # Built before any file is read: a broken recording shows up when the size (or the sample) is needed.
    (tmp_path / "test" / "a" / "bad.npy").write_bytes(b"not numpy")
    lazy = FolderDataset(tmp_path, split="train")
    with pytest.raises(ValueError, match="bad.npy"):
        _ = lazy.sensor_size


def test_max_samples_is_understood_by_the_one_builder():
    full = build_dataset({"name": "synthetic", "n_samples": {"train": 20, "test": 5}}, "train")
    small = build_dataset({"name": "synthetic", "n_samples": {"train": 20, "test": 5}, "max_samples": 6}, "train")
    assert len(small) == 6 and small.classes == full.classes and small.sensor_size == full.sensor_size
    assert small.labels == [int(full.labels[i]) for i in small.indices]
    assert small.source(0) == full.source(int(small.indices[0]))


# -- registry -------------------------------------------------------------------------------------------------


def test_registry_names_and_errors(tmp_path):
    assert set(DATASET_NAMES) == {
        "nmnist_small", "poker_dvs", "dvsgesture_samples", "folder", "synthetic", "dvsgesture",
        "nmnist", "shd", "ssc", "pokerdvs_tonic", "cifar10dvs", "ncaltech101",
    }
    with pytest.raises(ValueError, match=r"'mnist'.*nmnist_small, poker_dvs"):
        build_dataset({"name": "mnist"}, "train")
    with pytest.raises(ValueError, match=r"no option\(s\) \['bin_us'\].*split_file"):
        build_dataset({"name": "poker_dvs", "bin_us": 5}, "train")
    with pytest.raises(ValueError, match="needs 'dataset.root'"):
        build_dataset({"name": "folder"}, "train")
    with pytest.raises(ValueError, match="no 'name'"):
        build_dataset({"root": "x"}, "train")


def test_registry_builds_from_a_yaml_config(tmp_path):
    for cls in ("a", "b"):
        write_events(tmp_path / "data" / cls / "r.npy", make_recording(3, 12, 9))
    cfg = OmegaConf.create(
        f"dataset:\n  name: folder\n  root: {tmp_path / 'data'}\n  sensor_size: [12, 9, 2]\n  extensions: [npy]\n"
    )
    ds = build_dataset(cfg.dataset, "all")
    assert len(ds) == 2 and ds.sensor_size == (12, 9, 2) and ds.classes == ["a", "b"]
    small = build_dataset(OmegaConf.create({"name": "nmnist_small", "root": None}), "test")
    assert len(small) == 100
    split_cfg = {"name": "poker_dvs", "split_file": "pokerDVS_2.db", "include_inverted": False}
    assert len(build_dataset(split_cfg, "train")) == 19


def test_registry_builds_the_synthetic_dataset_lazily():
    ds = build_dataset({"name": "synthetic", "n_samples": {"train": 3, "test": 2}}, "test")
    assert len(ds) == 2


# -- tonic datasets -------------------------------------------------------------------------------------------

TONIC_CASES = [
    (TonicNMNIST, "train", "NMNIST", ["train.zip", "Train/<digit 0-9>/<sample>.bin"]),
    (TonicDVSGesture, "test", "DVSGesture", ["ibmGestureTest.tar.gz", "ibmGestureTest/user<NN>_<lighting>"]),
    (TonicSHD, "test", "SHD", ["shd_test.h5.zip", "SHD/shd_test.h5"]),
    (TonicSSC, "valid", "SSC", ["ssc_valid.h5.zip", "SSC/ssc_valid.h5"]),
    (TonicPokerDVS, "train", "POKERDVS", ["pips_train.tar.gz", "pips_train/<cl|he|di|sp>"]),
    (TonicCIFAR10DVS, "all", "CIFAR10DVS", ["CIFAR10DVS.zip", "<class name>/<sample>.aedat4"]),
    (TonicNCaltech101, "all", "NCALTECH101", ["N-Caltech101-archive.zip", "Caltech101/<class name>"]),
]


@pytest.mark.parametrize("cls, split, folder, mentions", TONIC_CASES, ids=[c[2] for c in TONIC_CASES])
def test_missing_tonic_data_says_what_to_place_where(tmp_path, cls, split, folder, mentions):
    with pytest.raises(DatasetFilesMissingError) as info:
        cls(split=split, root=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / folder) in message
    for text in mentions:
        assert text in message


def test_failed_download_names_the_cause_and_the_files(tmp_path, monkeypatch):
    import tonic

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tonic.datasets.SHD, "download", offline)
    pattern = r"(?s)download failed: URLError.*no network.*shd_train\.h5\.zip"
    with pytest.raises(DatasetFilesMissingError, match=pattern):
        TonicSHD(split="train", root=tmp_path)


def write_fake_shd(path, samples, labels, keys):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        times = fh.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(np.float32))
        units = fh.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (t, u) in enumerate(samples):
            times[i], units[i] = np.asarray(t, np.float32), np.asarray(u, np.uint16)
        fh["labels"] = np.asarray(labels, dtype=np.uint16)
        fh["extra/keys"] = np.array(keys, dtype="S")


def test_shd_reads_channels_and_seconds_as_events_in_microseconds(tmp_path, monkeypatch):
    samples = [([0.0, 0.0125, 0.5, 0.9999], [3, 699, 0, 42]), ([0.25], [7])]
    write_fake_shd(tmp_path / "SHD" / "shd_train.h5", samples, [1, 0], ["null", "eins"])
    ds = TonicSHD(split="train", root=tmp_path, download=False)
    assert len(ds) == 2 and ds.classes == ["null", "eins"] and ds.sensor_size == (700, 1, 1)
    events, label = ds[0]
    assert label == 1 and events.dtype == EVENT_DTYPE
    assert events["x"].tolist() == [3, 699, 0, 42] and not events["y"].any() and not events["p"].any()
    # float32 seconds -> nearest µs (0.0125 s is 12500 µs, not 12499 from truncation)
    assert events["t"].tolist() == [0, 12_500, 500_000, 999_900]
    # one HDF5 handle per process: reused across samples, reopened after a fork, dropped when pickled
    handle = ds._h5
    ds[1]
    assert ds._h5 is handle and handle is not None
    real_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real_pid + 1)
    ds[1]
    assert ds._h5 is not handle
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._h5 is None and np.array_equal(clone[0][0], events)


def test_tonic_nmnist_uses_files_on_disk_without_downloading(tmp_path, monkeypatch):
    import tonic

    def no_network(self):
        raise AssertionError("tried to download")

    monkeypatch.setattr(tonic.dataset.Dataset, "download", no_network)
    src = require_data("nmnist_small", "1.bs2")  # an N-MNIST training sample of digit 5
    target = tmp_path / "NMNIST" / "Train" / "5" / "00001.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(src.read_bytes())
    ds = TonicNMNIST(split="train", root=tmp_path)  # no train.zip: tonic itself would download again
    assert len(ds) == 1 and ds.labels == [5] and ds.source(0) == str(target)
    events, label = ds[0]
    assert label == 5 and np.array_equal(events, read_nmnist_bin(src)[0])


def test_tonic_dvsgesture_converts_milliseconds_and_tonic_dtypes(tmp_path):
    # tonic's prepared DVS Gesture: one (N, 4) array per gesture with columns x, y, p, t (ms)
    folder = tmp_path / "DVSGesture" / "ibmGestureTest" / "user24_led"
    folder.mkdir(parents=True)
    np.save(folder / "3.npy", np.array([[5, 7, 1, 0], [127, 0, 0, 2], [64, 64, 1, 2]], dtype=np.float64))
    ds = TonicDVSGesture(split="test", root=tmp_path, download=False)
    assert len(ds) == 1 and ds.labels == [3] and ds.classes[3] == "right_arm_clockwise"
    events, _ = ds[0]
    assert events.dtype == EVENT_DTYPE
    assert events["t"].tolist() == [0, 2000, 2000] and events["x"].tolist() == [5, 127, 64]
    assert events["p"].tolist() == [1, 0, 1]


def test_tonic_cifar10dvs_hold_out_split_and_sensor_check(tmp_path):
    sample = require_data("format_samples", "tonic_test_data", "sample.aedat4")  # a 320x240 recording
    for cls in ("airplane", "cat"):
        (tmp_path / "CIFAR10DVS" / cls).mkdir(parents=True)
        for k in range(10):
            os.symlink(sample, tmp_path / "CIFAR10DVS" / cls / f"{cls}_{k}.aedat4")
    everything = TonicCIFAR10DVS(root=tmp_path, download=False)
    train = TonicCIFAR10DVS("train", root=tmp_path, download=False)
    test = TonicCIFAR10DVS("test", root=tmp_path, download=False, test_fraction=0.2)
    assert len(everything) == 20 and everything.class_counts().tolist()[:4] == [10, 0, 0, 10]
    assert len(train) == 18 and len(test) == 4 and test.class_counts()[[0, 3]].tolist() == [2, 2]
    assert not stems(TonicCIFAR10DVS("test", root=tmp_path, download=False)) & stems(train)
    with pytest.raises(ValueError, match=r"airplane_\d\.aedat4.*field 'x'.*outside the sensor size"):
        test[0]  # CIFAR10-DVS is 128x128; this recording is not
