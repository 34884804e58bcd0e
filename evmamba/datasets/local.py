"""The real recordings staged in :func:`~evmamba.datasets.paths.data_root` as ready datasets.

* :class:`NMNISTSmall` -- 1000 train + 100 test N-MNIST samples (``nmnist_small/``, 34x34);
* :class:`PokerDVS` -- the 131 POKER-DVS pip symbols (``poker_dvs/Cards/``, 35x35 frame), with the HOTS
  split files or a stratified k-fold split;
* :class:`DVSGestureSamples` -- ten 1.45 s DVS Gesture trials, one per class 1-10 (``dvsgesture_slayer_bs2/``).

Sample order is fixed (label-list order, sorted file names) so that indices and splits are reproducible.
``data_root()/PROVENANCE.md`` describes the files.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ..pipeline.readers.common import check_policy
from .base import EventFileDataset
from .paths import require_data
from .splits import stratified_folds

NMNIST_CLASSES = [str(d) for d in range(10)]

#: tonic's POKERDVS class order (cl, he, di, sp), spelled out.
POKER_CLASSES = ["club", "heart", "diamond", "spade"]
POKER_SENSOR = (35, 35, 2)  # the pips are 32x32 crops shown in a 35x35 frame (tonic's POKERDVS size)
POKER_SPLIT_FILES = (
    "pokerDVS_1.db",
    "pokerDVS_2.db",
    "pokerDVS_3.db",
    "pokerDVS_4.db",
    "pokerDVS_5.db",
    "pokerDVSnewstart.db",
)
#: Split codes of the HOTS split files: Learn (0), Train (1), Test (2).
HOTS_SPLITS = {"learn": 0, "train": 1, "test": 2}
_POKER_PREFIX = {"cl": "club", "he": "heart", "di": "diamond", "sp": "spade"}
_HOTS_LABEL_IDS = {"cl": 1, "di": 2, "he": 3, "sp": 4}  # label ids used inside the split files
_UPRIGHT_NAME = re.compile(r"(cl|he|di|sp)_(\d+)")
_INVERTED_NAME = re.compile(r"x(club|heart|diamond|spade)(\d+)i")

#: DVS Gesture classes in tonic's order (IBM gesture ids 1..11 are indices 0..10).
DVSGESTURE_CLASSES = [
    "hand_clapping",
    "right_hand_wave",
    "left_hand_wave",
    "right_arm_clockwise",
    "right_arm_counter_clockwise",
    "left_arm_clockwise",
    "left_arm_counter_clockwise",
    "arm_roll",
    "air_drums",
    "air_guitar",
    "other_gestures",
]


def _dataset_folder(root, default: str, *sub: str) -> Path:
    """``root/sub`` when ``root`` is given, else ``data_root()/default/sub``; ``FileNotFoundError`` if missing."""
    if root is None:
        return require_data(default, *sub)
    path = Path(root).expanduser().joinpath(*sub)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist or is not a folder")
    return path


def _check_split(name: str, split, allowed) -> str:
    if split not in allowed:
        raise ValueError(f"{name}: split must be one of {tuple(allowed)}; got {split!r}")
    return split


def read_label_list(path: Path) -> list[tuple[str, int]]:
    """``(sample id, class)`` rows of an N-MNIST label list (``#`` header lines, then ``<id> <class>``).

    Raises ``ValueError`` naming the file and line for a malformed row.
    """
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
            raise ValueError(f"{path}:{lineno}: expected '<sample> <class>' (two integers); got {line!r}")
        rows.append((parts[0], int(parts[1])))
    if not rows:
        raise ValueError(f"{path}: the label list has no rows")
    return rows


class NMNISTSmall(EventFileDataset):
    """The staged N-MNIST subset: ``split="train"`` (1000 samples, ``train1K.txt``) or ``"test"`` (100,
    ``test100.txt``), in list order. Sensor (34, 34, 2), classes ``"0"``..``"9"``.

    ``root`` is the ``nmnist_small`` folder (default ``data_root()/nmnist_small``). Raises
    ``FileNotFoundError`` when the folder or a listed file is missing and ``ValueError`` for a bad split
    or a malformed label list.
    """

    LISTS = {"train": "train1K.txt", "test": "test100.txt"}

    def __init__(self, split: str = "train", root=None, on_unsorted: str = "error") -> None:
        _check_split("nmnist_small", split, self.LISTS)
        folder = _dataset_folder(root, "nmnist_small")
        list_path = folder / self.LISTS[split]
        if not list_path.is_file():
            raise FileNotFoundError(f"{list_path}: label list not found")
        rows = read_label_list(list_path)
        paths = [folder / f"{sample}.bs2" for sample, _ in rows]
        labels = [label for _, label in rows]
        bad = [f"{list_path}: class {label} of sample {s}" for (s, label) in rows if not 0 <= label < 10]
        if bad:
            raise ValueError(f"{bad[0]} is not a digit 0-9")
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{list_path}: {len(missing)} listed files are missing, e.g. {missing[0]}")
        super().__init__(
            "nmnist_small", paths, labels, NMNIST_CLASSES, (34, 34, 2), format="nmnist_bin", on_unsorted=on_unsorted
        )
        self.split = split


def poker_label(path: Path) -> int:
    """Class index (``POKER_CLASSES``) of a POKER-DVS file from its name: ``cl_NN`` / ``xclubNNi`` style.

    Raises ``ValueError`` naming the file when the name follows neither pattern.
    """
    stem = path.name.split(".", 1)[0]
    if stem.endswith("_td"):
        stem = stem[: -len("_td")]
    m = _UPRIGHT_NAME.fullmatch(stem)
    if m:
        return POKER_CLASSES.index(_POKER_PREFIX[m.group(1)])
    m = _INVERTED_NAME.fullmatch(stem)
    if m:
        return POKER_CLASSES.index(m.group(1))
    raise ValueError(
        f"{path}: cannot tell the pip from the file name (expected cl_NN, he_NN, di_NN, sp_NN or xclubNNi, ...)"
    )


def read_hots_split_file(path: Path) -> list[tuple[str, int]]:
    """``(file stem, split code)`` rows of a HOTS POKER-DVS split file (``.db``).

    The format: a ``%`` header line, a line with the row count, then ``file label_name label_id split`` rows
    (label ids cl=1, di=2, he=3, sp=4; split 0 = Learn, 1 = Train, 2 = Test). File names are of the
    ``_td.dat`` copies; the returned stem drops ``_td.dat`` (``di_29``). Raises ``ValueError`` naming the file
    and line for a malformed row, a label that disagrees with the file name or a wrong row count.
    """
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    body = [(i, ln) for i, ln in enumerate(lines, start=1) if ln and not ln.startswith("%")]
    if not body or not body[0][1].isdigit():
        raise ValueError(f"{path}: expected the row count after the '%' header")
    count = int(body[0][1])
    rows = []
    for lineno, line in body[1:]:
        parts = line.split()
        if len(parts) != 4 or not parts[2].isdigit() or parts[3] not in ("0", "1", "2"):
            raise ValueError(f"{path}:{lineno}: expected 'file label_name label_id split(0|1|2)'; got {line!r}")
        name, label_name, label_id, code = parts
        stem = name[: -len("_td.dat")] if name.endswith("_td.dat") else name.rsplit(".", 1)[0]
        prefix = stem.split("_", 1)[0]
        if prefix != label_name or _HOTS_LABEL_IDS.get(label_name) != int(label_id):
            raise ValueError(f"{path}:{lineno}: label {label_name}/{label_id} disagrees with the file name {name!r}")
        rows.append((stem, int(code)))
    if len(rows) != count:
        raise ValueError(f"{path}: header says {count} rows but the file has {len(rows)}")
    stems = [s for s, _ in rows]
    if len(set(stems)) != len(stems):
        raise ValueError(f"{path}: some files are listed twice")
    return rows


class PokerDVS(EventFileDataset):
    """POKER-DVS from the staged ``.aedat`` files: 100 upright pips (``pips_aedat/``) and 31 inverted ones
    (``inverted_pips_aedat/``), labels from the file names, classes in tonic's order
    ``["club", "heart", "diamond", "spade"]``, sensor (35, 35, 2).

    Choosing the recordings (deterministic in every mode):

    * ``split="all"``: every file (131, or 100 without the inverted pips);
    * ``split_file="pokerDVS_1.db"`` (any of :data:`POKER_SPLIT_FILES`, or a path) with ``split`` one of
      ``"learn"``, ``"train"``, ``"test"``: the HOTS split (codes 0/1/2). Those files list only the 100
      upright pips, so ``include_inverted`` must then be ``False`` (its default ``None`` means ``True``
      without a split file and ``False`` with one);
    * ``split="train"`` or ``"test"`` without a split file: stratified k-fold over the chosen files
      (``n_folds`` default 5, ``fold`` default 0), fold ``fold`` being the test set; within each class the
      files are dealt to folds in an order fixed by ``seed`` (see :mod:`evmamba.datasets.splits`). The
      default is therefore about 105 train / 26 test recordings with every class in both.

    ``root`` is the ``poker_dvs`` folder (default ``data_root()/poker_dvs``). Raises ``ValueError`` for
    inconsistent options and ``FileNotFoundError`` for missing files.
    """

    def __init__(
        self,
        split: str = "all",
        split_file: str | None = None,
        include_inverted: bool | None = None,
        fold: int | None = None,
        n_folds: int | None = None,
        seed: int = 0,
        root=None,
        on_unsorted: str = "error",
    ) -> None:
        name = "poker_dvs"
        check_policy(on_unsorted, name)
        folder = _dataset_folder(root, "poker_dvs", "Cards")
        if split_file is not None and (n_folds is not None or fold is not None):
            raise ValueError(f"{name}: give either split_file or fold/n_folds, not both")
        if include_inverted is None:
            include_inverted = split_file is None
        if split_file is not None and include_inverted:
            raise ValueError(
                f"{name}: the HOTS split files list only the 100 upright pips; set include_inverted=False "
                "to use a split file"
            )
        upright = sorted((folder / "pips_aedat").glob("*.aedat"))
        inverted = sorted((folder / "inverted_pips_aedat").glob("*.aedat")) if include_inverted else []
        if not upright:
            raise FileNotFoundError(f"{folder / 'pips_aedat'}: no .aedat files")
        paths = upright + inverted
        labels = [poker_label(p) for p in paths]

        if split_file is not None:
            _check_split(name, split, ("all", *HOTS_SPLITS))
            split_path = self._split_path(folder, split_file)
            rows = read_hots_split_file(split_path)
            by_stem = {p.stem: (p, lab) for p, lab in zip(paths, labels)}
            unknown = [s for s, _ in rows if s not in by_stem]
            if unknown:
                raise FileNotFoundError(f"{split_path}: lists {unknown[0]!r}, which has no .aedat file in {folder}")
            wanted = [s for s, code in rows if split == "all" or code == HOTS_SPLITS[split]]
            # Split-file order is shuffled; sort by file name so that indices do not depend on it.
            chosen = sorted(by_stem[s] for s in wanted)
            if not chosen:
                raise ValueError(f"{name}: {split_path.name} has no {split!r} rows")
            paths, labels = [p for p, _ in chosen], [lab for _, lab in chosen]
        elif split == "all":
            if fold is not None or n_folds is not None:
                raise ValueError(f"{name}: fold/n_folds select a train or test part; split='all' takes every file")
        else:
            _check_split(name, split, ("all", "train", "test"))
            n_folds = 5 if n_folds is None else n_folds
            fold = 0 if fold is None else fold
            folds = stratified_folds([p.name for p in paths], labels, n_folds, seed)
            if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < n_folds:
                raise ValueError(f"{name}: fold must be an integer in 0..{n_folds - 1}; got {fold!r}")
            keep = (folds == fold) if split == "test" else (folds != fold)
            paths = [p for p, k in zip(paths, keep) if k]
            labels = [lab for lab, k in zip(labels, keep) if k]
        super().__init__(
            name, paths, labels, POKER_CLASSES, POKER_SENSOR, format="aedat2_dvs128", on_unsorted=on_unsorted
        )
        self.split = split

    @staticmethod
    def _split_path(cards: Path, split_file) -> Path:
        candidate = Path(split_file).expanduser()
        if candidate.is_file():
            return candidate
        in_usable = cards / "usable" / str(split_file)
        if in_usable.is_file():
            return in_usable
        raise FileNotFoundError(
            f"split file {split_file!r} not found (looked for it as a path and in {cards / 'usable'}); "
            f"the staged ones are {POKER_SPLIT_FILES}"
        )


class DVSGestureSamples(EventFileDataset):
    """Ten DVS128 Gesture trials (``1.bs2``..``10.bs2``, 1.45 s each), one per gesture class 1-10, with
    the labels of ``labels_inferred.csv`` (inferred from the recordings, see PROVENANCE.md).

    Classes are the 11 DVS Gesture classes in tonic's order (the "other gestures" class has no sample);
    sensor (128, 128, 2). There is no held-out split: ``split`` may be ``"all"``, ``"train"`` or ``"test"``
    and always gives the same ten recordings (use them for demos, streaming and smoke tests, not to
    measure accuracy). ``root`` is the folder (default ``data_root()/dvsgesture_slayer_bs2``).
    """

    LABELS_CSV = "labels_inferred.csv"

    def __init__(self, split: str = "all", root=None, on_unsorted: str = "error") -> None:
        name = "dvsgesture_samples"
        _check_split(name, split, ("all", "train", "test"))
        folder = _dataset_folder(root, "dvsgesture_slayer_bs2")
        csv_path = folder / self.LABELS_CSV
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path}: label file not found")
        rows = []
        with open(csv_path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing_cols = {"file", "tonic_class_index"} - set(reader.fieldnames or [])
            if missing_cols:
                raise ValueError(f"{csv_path}: missing column(s) {sorted(missing_cols)}")
            for lineno, row in enumerate(reader, start=2):
                index = row["tonic_class_index"].strip()
                if not index.isdigit() or int(index) >= len(DVSGESTURE_CLASSES):
                    raise ValueError(f"{csv_path}:{lineno}: tonic_class_index {index!r} is not 0..10")
                rows.append((folder / row["file"].strip(), int(index)))
        rows.sort(key=lambda r: (len(r[0].stem), r[0].stem))  # numeric order 1..10 for numeric names
        missing = [p for p, _ in rows if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{csv_path}: listed file {missing[0]} is missing")
        super().__init__(
            name,
            [p for p, _ in rows],
            [lab for _, lab in rows],
            DVSGESTURE_CLASSES,
            (128, 128, 2),
            format="nmnist_bin",
            on_unsorted=on_unsorted,
        )
        self.split = split


__all__ = [
    "DVSGESTURE_CLASSES",
    "DVSGestureSamples",
    "HOTS_SPLITS",
    "NMNISTSmall",
    "POKER_CLASSES",
    "POKER_SPLIT_FILES",
    "PokerDVS",
    "poker_label",
    "read_hots_split_file",
    "read_label_list",
]
