"""Your own recordings as a dataset: a folder of event files, labelled by class sub-folders or a CSV.

Layouts (``root`` is the folder you pass):

* class sub-folders -- ``root/<class name>/**/<file>``; classes are the sub-folder names, sorted. With
  ``split="train"`` the classes are read from ``root/train/<class name>/...`` (any split name works);
* a labels CSV -- ``labels_csv`` (a path, or a name inside ``root``) with a header row and the columns
  ``file`` (relative to ``root``) and ``label``, plus an optional ``split`` column. Labels that are all
  integers are used as class indices (classes ``"0"``..``"K-1"``); otherwise the classes are the sorted
  distinct label names.

Files are kept when their extension is in ``extensions`` (default: every extension
:func:`~evmamba.datasets.readers.read_events` knows) and are ordered by relative path. The sensor size is
``sensor_size`` when given; otherwise every file is read once at construction and the size is the
element-wise maximum of the files' sizes (header or largest coordinate + 1), so that all samples share it.
Pass ``sensor_size`` to skip that scan on large datasets.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tqdm.auto import tqdm

from evmamba.pipeline.events import check_sensor_size

from .base import EventFileDataset
from .readers import EXTENSIONS, FORMATS, read_events
from .readers.common import check_policy


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


class FolderDataset(EventFileDataset):
    """A folder of event files as a dataset (layouts in the module docstring).

    Parameters: ``root`` folder; ``labels_csv`` (``None``: class sub-folders); ``sensor_size``
    ``(width, height, polarities)`` or ``None`` to infer it; ``extensions`` to keep; ``split`` (``None`` or
    ``"all"``: every file); ``format`` to force one reader (default: detected per file); ``on_unsorted``
    for the reader; ``name`` for messages.

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
        if labels_csv is not None:
            paths, labels, classes = self._from_csv(base, labels_csv, split, exts)
        else:
            paths, labels, classes = self._from_subfolders(base, split, exts)
        if sensor_size is None:
            size = self._scan_sensor_size(base, paths, format, on_unsorted)
        else:
            size = check_sensor_size(sensor_size, f"{base}: sensor_size")
        super().__init__(name, paths, labels, classes, size, format=format, on_unsorted=on_unsorted)
        self.root = base
        self.split = split or "all"

    @staticmethod
    def _from_subfolders(base: Path, split, exts):
        top = base
        if split is not None:
            top = base / split
            if not top.is_dir():
                raise ValueError(
                    f"{base}: split {split!r} needs a folder {top} holding class sub-folders, or a labels CSV "
                    "with a 'split' column"
                )
        class_dirs = sorted(d for d in top.iterdir() if d.is_dir() and not d.name.startswith("."))
        if split is None and {"train", "test"} <= {d.name for d in class_dirs}:
            raise ValueError(
                f"{base}: has 'train' and 'test' sub-folders; pass split='train' or split='test' (they would "
                "otherwise be taken as two classes)"
            )
        paths, labels, classes = [], [], []
        for d in class_dirs:
            files = sorted(p for p in d.rglob("*") if _matches(p, exts))
            if not files:
                continue
            classes.append(d.name)
            paths.extend(files)
            labels.extend([len(classes) - 1] * len(files))
        if not paths:
            raise ValueError(
                f"{top}: no event files with extensions {exts} in class sub-folders (expected "
                f"{top}/<class name>/<file>)"
            )
        return paths, labels, classes

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
                    f"{base / split})"
                )
            rows = []
            for lineno, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if not row["file"] or not row["label"]:
                    raise ValueError(f"{csv_path}:{lineno}: empty 'file' or 'label'")
                if split is not None and row.get("split") != split:
                    continue
                rows.append((lineno, row["file"], row["label"]))
        if not rows:
            what = f"rows with split {split!r}" if split is not None else "rows"
            raise ValueError(f"{csv_path}: no {what}")
        seen: dict[str, int] = {}
        paths = []
        for lineno, name, _ in rows:
            if name in seen:
                raise ValueError(f"{csv_path}:{lineno}: file {name!r} is already listed on line {seen[name]}")
            seen[name] = lineno
            path = base / name
            if not path.is_file():
                raise FileNotFoundError(f"{csv_path}:{lineno}: file {path} does not exist")
            if path.suffix.lower() not in exts:
                raise ValueError(f"{csv_path}:{lineno}: file {name!r} does not have one of the extensions {exts}")
            paths.append(path)
        names = [label for _, _, label in rows]
        if all(n.isdigit() for n in names):
            labels = [int(n) for n in names]
            classes = [str(i) for i in range(max(labels) + 1)]
        else:
            classes = sorted(set(names))
            labels = [classes.index(n) for n in names]
        return paths, labels, classes

    @staticmethod
    def _scan_sensor_size(base: Path, paths, format, on_unsorted):
        width = height = npol = 0
        for path in tqdm(paths, desc=f"sensor size of {base.name}", unit="file", disable=None, leave=False):
            _, (w, h, p) = read_events(path, None, format, on_unsorted=on_unsorted)
            width, height, npol = max(width, w), max(height, h), max(npol, p)
        return (width, height, npol)
