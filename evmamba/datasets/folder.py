"""Your own recordings as a dataset: a folder of event files, labelled by class sub-folders or a CSV.

Layouts (``root`` is the folder you pass):

* class sub-folders -- ``root/<class name>/**/<file>``; classes are the sub-folder names, sorted. With
  ``split="train"`` the files are read from ``root/train/<class name>/...`` (any split name works);
* a labels CSV -- ``labels_csv`` (a path, or a name inside ``root``) with a header row and the columns
  ``file`` (relative to ``root``) and ``label``, plus an optional ``split`` column. Labels that are all
  integers are used as class indices (classes ``"0"``..``"K-1"``); otherwise the classes are the sorted
  distinct label names.

**Classes and the sensor size are decided once for the whole dataset, over every split**, so that class
``k`` and token ``j`` mean the same thing in the training and the test split: the classes are those of
every split folder under ``root`` (the class sub-folders that hold at least one event file) or of every
row of the CSV, whatever ``split`` is asked for. A split without any sample of a class therefore keeps
that class's index. Class names that differ only in upper/lower case (``Wave`` and ``wave``) are taken as
one class, spelled as the first of them in sorted order, with a warning naming the spellings.

**Folders without a split.** When the layout has no splits (class sub-folders directly under ``root``, or
a CSV without a ``split`` column), ``test_fraction`` turns the splits ``"train"`` and ``"test"`` into a
stratified hold-out: ``round(n_c * test_fraction)`` recordings of every class ``c`` are the test split, chosen
by ``seed`` from the files' relative paths (:func:`~evmamba.datasets.splits.stratified_holdout`), and the
rest are the train split. Without ``test_fraction`` such a folder has only the split ``"all"``.

Files are kept when their extension is in ``extensions`` (default: every extension
:func:`~evmamba.pipeline.readers.read_events` knows) and are ordered by relative path. The sensor size is
``sensor_size`` when given; otherwise every file of every split is read once, on first use of
``sensor_size`` (not when the dataset is built, so an up-to-date token cache needs no pass over the data),
and the size is the element-wise maximum of the files' sizes (header or largest coordinate + 1). Pass
``sensor_size`` to skip that scan on large datasets.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from evmamba.core.events import check_sensor_size

from ..pipeline.readers import EXTENSIONS, FORMATS, read_events
from ..pipeline.readers.common import check_policy
from .base import EventFileDataset


def _normalise_extensions(extensions, source: str) -> tuple[str, ...]:
    if extensions is None:
        return EXTENSIONS
    if isinstance(extensions, str):
        extensions = [extensions]
    out = []
    for ext in extensions:
        if not isinstance(ext, str) or not ext.strip("."):
            raise ValueError(f"{source}: extensions must be strings such as '.npy'; got {ext!r}")
        out.append("." + ext.lower().lstrip("."))
    return tuple(out)


def _matches(path: Path, extensions: tuple[str, ...]) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in extensions


def _merge_case(names, where: str) -> dict[str, str]:
    """``{spelling: class name}`` for the distinct ``names``: spellings that differ only in case map to one
    class, the first of them in sorted order, with a warning naming them."""
    groups: dict[str, list[str]] = {}
    for name in sorted(set(names)):
        groups.setdefault(name.casefold(), []).append(name)
    mapping = {}
    for spellings in groups.values():
        if len(spellings) > 1:
            warnings.warn(
                f"{where}: class names {spellings} differ only in upper/lower case; they are taken as one class, "
                f"{spellings[0]!r} (rename them if they are different classes)",
                UserWarning,
                stacklevel=4,
            )
        for name in spellings:
            mapping[name] = spellings[0]
    return mapping


def has_split_layout(root, labels_csv=None) -> bool:
    """Whether a folder dataset provides its own splits: ``train/`` and ``test/`` sub-folders, or a labels
    CSV with a ``split`` column. (Reads only the folder listing or the CSV header.)"""
    base = Path(root).expanduser()
    if labels_csv is None:
        return base.is_dir() and (base / "train").is_dir() and (base / "test").is_dir()
    csv_path = Path(labels_csv).expanduser()
    if not csv_path.is_absolute() and not csv_path.is_file():
        csv_path = base / csv_path
    if not csv_path.is_file():
        return False  # the dataset itself reports the missing file
    with open(csv_path, newline="") as fh:
        header = next(csv.reader(fh), [])
    return "split" in [c.strip() for c in header]


def _check_holdout(base: Path, test_fraction, seed) -> None:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"{base}: 'test_fraction' (dataset.test_fraction) must lie strictly between 0 and 1; "
                         f"got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{base}: 'seed' (dataset.seed) must be an int >= 0; got {seed!r}")


def _hold_out(base: Path, paths, labels, classes, split: str, test_fraction: float, seed: int):
    """The ``split`` ("train" or "test") part of a stratified hold-out of ``paths``; keys are paths relative
    to ``base``, so the choice does not depend on where the folder lives."""
    from .splits import stratified_holdout

    keys = [Path(p).relative_to(base).as_posix() for p in paths]
    test = stratified_holdout(keys, labels, test_fraction, seed)
    if not test.any():
        raise ValueError(
            f"{base}: 'test_fraction' {test_fraction} holds out no recording (no class has more than "
            f"{int(np.bincount(labels).max()) if labels else 0}); raise dataset.test_fraction, or give the "
            "folder train/ and test/ sub-folders"
        )
    keep = test if split == "test" else ~test
    return [p for p, k in zip(paths, keep) if k], [lab for lab, k in zip(labels, keep) if k]


# Sensor sizes already scanned in this process, by (files with sizes and times, format, policy): the train
# and test splits of one dataset share the scan.
_SCANNED: dict[tuple, tuple[int, int, int]] = {}


class FolderDataset(EventFileDataset):
    """A folder of event files as a dataset (layouts, classes and sensor size in the module docstring).

    Parameters: ``root`` folder; ``labels_csv`` (``None``: class sub-folders); ``sensor_size``
    ``(width, height, polarities)`` or ``None`` to infer it from every file of every split; ``extensions``
    to keep; ``split`` (``None`` or ``"all"``: every file); ``format`` to force one reader (default:
    detected per file); ``on_unsorted`` for the reader; ``name`` for messages; ``test_fraction`` and
    ``seed``: the hold-out that makes ``"train"`` and ``"test"`` of a folder without splits (module docstring).

    Attributes besides the dataset interface: ``root``, ``split``, ``all_paths`` (the files of every split),
    ``declared_sensor_size`` (``sensor_size`` as given, or None when it is inferred).

    Raises ``FileNotFoundError`` for a missing root, CSV or listed file, and ``ValueError`` naming the
    folder or CSV line for an empty dataset, a malformed CSV, a split that the layout does not provide,
    or a file that cannot be read.
    """

    def __init__(
        self,
        root,
        labels_csv=None,
        sensor_size=None,
        extensions=None,
        split: str | None = None,
        format: str | None = None,
        on_unsorted: str = "error",
        name: str = "folder",
        test_fraction: float | None = None,
        seed: int = 0,
    ) -> None:
        base = Path(root).expanduser()
        if not base.is_dir():
            raise FileNotFoundError(f"{base}: dataset folder does not exist")
        check_policy(on_unsorted, str(base))
        if format is not None and format not in FORMATS:
            raise ValueError(f"{base}: unknown format {format!r}; known formats: {FORMATS}")
        exts = _normalise_extensions(extensions, str(base))
        if split == "all":
            split = None
        holdout = None
        if test_fraction is not None:
            _check_holdout(base, test_fraction, seed)
            if has_split_layout(base, labels_csv):
                has = f"a 'split' column in {labels_csv}" if labels_csv else "train/ and test/ sub-folders"
                raise ValueError(f"{base}: 'test_fraction' ({test_fraction}) is for a folder without splits, but "
                                 f"this one has them ({has}); remove dataset.test_fraction")
            if split is not None:
                if split not in ("train", "test"):
                    raise ValueError(f"{base}: split {split!r} does not exist; with 'test_fraction' the splits are "
                                     "'train', 'test' and 'all'")
                holdout, split = split, None
        if labels_csv is not None:
            paths, labels, classes, all_paths = self._from_csv(base, labels_csv, split, exts)
        else:
            paths, labels, classes, all_paths = self._from_subfolders(base, split, exts)
        if holdout is not None:
            paths, labels = _hold_out(base, paths, labels, classes, holdout, float(test_fraction), int(seed))
        self.test_fraction = test_fraction
        self.declared_sensor_size = (
            None if sensor_size is None else check_sensor_size(sensor_size, f"{base}: sensor_size")
        )
        self.all_paths = all_paths
        self.root = base
        super().__init__(
            name, paths, labels, classes, self.declared_sensor_size, format=format, on_unsorted=on_unsorted
        )
        self.split = holdout or split or "all"

    @property
    def sensor_size(self) -> tuple[int, int, int]:
        """``(width, height, polarities)``: as given, or the largest over every file of every split (read once,
        on first use)."""
        if self._sensor_size is None:
            self._sensor_size = self._scan_sensor_size(self.root, self.all_paths, self.format, self.on_unsorted)
        return self._sensor_size

    @sensor_size.setter
    def sensor_size(self, value) -> None:
        self._sensor_size = None if value is None else tuple(int(v) for v in value)

    def data_files(self) -> list[Path]:
        """Files besides this split's that decide its content: every split's files when the sensor size is
        inferred from them (see :func:`~evmamba.datasets.fingerprint.dataset_fingerprint`)."""
        return list(self.all_paths) if self.declared_sensor_size is None else []

    @staticmethod
    def _class_files(top: Path, exts) -> dict[str, list[Path]]:
        """``{class folder name: sorted event files}`` of the class sub-folders of ``top`` that hold any."""
        out = {}
        for d in sorted(d for d in top.iterdir() if d.is_dir() and not d.name.startswith(".")):
            files = sorted(p for p in d.rglob("*") if _matches(p, exts))
            if files:
                out[d.name] = files
        return out

    @classmethod
    def _from_subfolders(cls, base: Path, split, exts):
        top = base
        if split is not None:
            top = base / split
            if not top.is_dir():
                raise ValueError(
                    f"{base}: split {split!r} needs a folder {top} holding class sub-folders, or a labels CSV "
                    "with a 'split' column; or set dataset.test_fraction (e.g. 0.2) to hold out that share of "
                    "every class as the test split"
                )
        elif {"train", "test"} <= {d.name for d in base.iterdir() if d.is_dir()}:
            raise ValueError(
                f"{base}: has 'train' and 'test' sub-folders; pass split='train' or split='test' (they would "
                "otherwise be taken as two classes)"
            )
        # Every split folder (each sub-folder of root) counts for the classes, not only the one asked for.
        tops = (
            [top] if split is None else sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
        )
        by_top = {t: cls._class_files(t, exts) for t in tops}
        mapping = _merge_case([c for found in by_top.values() for c in found], str(base))
        classes = sorted(set(mapping.values()))
        paths, labels = [], []
        for folder, files in by_top[top].items():
            paths.extend(files)
            labels.extend([classes.index(mapping[folder])] * len(files))
        if not paths:
            raise ValueError(
                f"{top}: no event files with extensions {exts} in class sub-folders (expected "
                f"{top}/<class name>/<file>)"
            )
        all_paths = [p for found in by_top.values() for files in found.values() for p in files]
        return paths, labels, classes, all_paths

    @staticmethod
    def _from_csv(base: Path, labels_csv, split, exts):
        csv_path = Path(labels_csv).expanduser()
        if not csv_path.is_absolute() and not csv_path.is_file():
            csv_path = base / csv_path
        if not csv_path.is_file():
            raise FileNotFoundError(f"{labels_csv}: labels CSV not found (also looked in {base})")
        with open(csv_path, newline="") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = {"file", "label"} - set(columns)
            if missing:
                raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}; the header has {columns}")
            if split is not None and "split" not in columns:
                raise ValueError(
                    f"{csv_path}: split {split!r} needs a 'split' column in the CSV (or class sub-folders under "
                    f"{base / split}); or set dataset.test_fraction (e.g. 0.2) to hold out that share of every "
                    "class as the test split"
                )
            rows = []  # every row, of every split: the classes and the sensor size are the dataset's
            for lineno, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if not row["file"] or not row["label"]:
                    raise ValueError(f"{csv_path}:{lineno}: empty 'file' or 'label'")
                rows.append((lineno, row["file"], row["label"], row.get("split")))
        if not rows:
            raise ValueError(f"{csv_path}: no rows")
        seen: dict[str, int] = {}
        all_paths = []
        for lineno, name, _, _ in rows:
            if name in seen:
                raise ValueError(f"{csv_path}:{lineno}: file {name!r} is already listed on line {seen[name]}")
            seen[name] = lineno
            path = base / name
            if not path.is_file():
                raise FileNotFoundError(f"{csv_path}:{lineno}: file {path} does not exist")
            if path.suffix.lower() not in exts:
                raise ValueError(f"{csv_path}:{lineno}: file {name!r} does not have one of the extensions {exts}")
            all_paths.append(path)
        names = [label for _, _, label, _ in rows]
        if all(n.isdigit() for n in names):
            indices = [int(n) for n in names]
            classes = [str(i) for i in range(max(indices) + 1)]
        else:
            mapping = _merge_case(names, str(csv_path))
            classes = sorted(set(mapping.values()))
            indices = [classes.index(mapping[n]) for n in names]
        keep = [k for k, row in enumerate(rows) if split is None or row[3] == split]
        if not keep:
            raise ValueError(f"{csv_path}: no rows with split {split!r}")
        return [all_paths[k] for k in keep], [indices[k] for k in keep], classes, all_paths

    @staticmethod
    def _scan_sensor_size(base: Path, paths, format, on_unsorted):
        from .fingerprint import file_stamp

        key = (tuple(tuple(file_stamp(p) or (str(p),)) for p in paths), format, on_unsorted)
        if key in _SCANNED:
            return _SCANNED[key]
        width = height = npol = 0
        for path in tqdm(paths, desc=f"sensor size of {base.name}", unit="file", disable=None, leave=False):
            _, (w, h, p) = read_events(path, None, format, on_unsorted=on_unsorted)
            width, height, npol = max(width, w), max(height, h), max(npol, p)
        _SCANNED[key] = (width, height, npol)
        return _SCANNED[key]
