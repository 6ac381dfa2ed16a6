"""Images listed in CSV files with their labels, as a zoo dataset: single-label or multi-label data.

``root/train.csv`` and ``root/test.csv`` (and ``root/val.csv``, if there is one: the validation split,
instead of a part held out of training) each have a column of image paths (relative to ``root``)
and a column of labels separated by ``separator``. A row with several labels makes the data
multi-label (an empty cell is then an image of none of them): the dataset then yields label sets (``targets`` holds a tuple of class
indices per image), which selects the ``multi_label`` task by itself. Label names are the sorted
set of labels in train.csv. Every row is checked when the dataset is made, and a bad one is named
by its file and line: a missing image, a label the training rows never use, an image listed
twice with different labels, an empty label cell in single-label data.
"""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from torch.utils.data import Dataset

from .._files import read_file
from ..errors import ZooError
from .images import image_file

CSV_LIMIT = 1 << 30  # bytes of one CSV file


class CsvLabels(Dataset):
    """Images listed in root/train.csv and root/test.csv, a column of paths and one of labels (space-separated).

    Rows with one label each are single-label data; a row with several makes it multi-label, where
    an empty cell is an image of no label (``multi_label = true`` says so even when no row has several). ``image_column``,
    ``label_column`` and ``separator`` name the columns and what separates labels.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        image_column: str = "image",
        label_column: str = "labels",
        separator: str = " ",
        multi_label: bool | None = None,
    ) -> None:
        if split not in ("train", "test", "val"):
            raise ValueError(f"split must be 'train', 'test' or 'val', got {split!r}")
        if not separator:
            raise ValueError("separator must not be empty")
        self.root = Path(root)
        columns = (image_column, label_column, separator)
        training = _rows(self.root / "train.csv", *columns)
        self.classes = sorted({label for _, labels, _ in training for label in labels})
        if not self.classes:
            raise ZooError(f"data.root: {self.root / 'train.csv'} has no labels in column '{label_column}'")
        several = any(len(labels) > 1 for _, labels, _ in training)
        self.multi_label = several if multi_label is None else multi_label
        rows = training if split == "train" else _rows(self.root / f"{split}.csv", *columns)
        index = {name: number for number, name in enumerate(self.classes)}
        where = self.root / f"{split}.csv"
        seen: dict[str, tuple[tuple[str, ...], int]] = {}
        self.samples: list[tuple[str, Any]] = []
        for image, labels, line in rows:
            unknown = [label for label in labels if label not in index]
            if unknown:
                raise ZooError(f"data: {where} line {line}: label {unknown[0]!r} is never used in train.csv "
                               f"(labels: {', '.join(self.classes)}); fix the row or add training images of it")  # fmt: skip
            if not self.multi_label and len(labels) != 1:
                raise ZooError(f"data: {where} line {line}: {len(labels)} labels in single-label data; give one "
                               "label a row, or set data.args.multi_label = true for label sets")  # fmt: skip
            earlier = seen.setdefault(image, (tuple(sorted(labels)), line))
            if earlier[0] != tuple(sorted(labels)):
                raise ZooError(f"data: {where} line {line}: {image} is listed on line {earlier[1]} with other "
                               "labels; list each image once, with all its labels")  # fmt: skip
            path = _image_path(self.root, image, where, line)
            codes = tuple(sorted({index[label] for label in labels}))
            self.samples.append((str(path), codes if self.multi_label else codes[0]))
        self.targets = [label for _, label in self.samples]
        self.transform: Any = None
        if split == "train" and read_file(self.root / "val.csv", limit=CSV_LIMIT) is not None:
            self.validation = CsvLabels(self.root, "val", image_column, label_column, separator, self.multi_label)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, label = self.samples[index]
        with image_file(Path(path)) as image:
            pass
        return (self.transform(image) if self.transform is not None else image), label


def _rows(path: Path, image_column: str, label_column: str, separator: str) -> list[tuple[str, list[str], int]]:
    """(image, labels, line number) of each row of the CSV file ``path``."""
    data = read_file(path, limit=CSV_LIMIT)
    if data is None:
        raise ZooError(f"data.root: {path} not found; the csv dataset reads train.csv and test.csv there")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ZooError(f"data: {path} is not UTF-8 text") from None
    reader = csv.DictReader(text.splitlines())
    missing = [column for column in (image_column, label_column) if column not in (reader.fieldnames or [])]
    if missing:
        raise ZooError(f"data: {path} has no column '{missing[0]}' (its columns: {', '.join(reader.fieldnames or [])});"
                       " name the columns with data.args.image_column and data.args.label_column")  # fmt: skip
    rows = []
    for row in reader:
        image, cell = (row[image_column] or "").strip(), row[label_column] or ""
        if not image:
            raise ZooError(f"data: {path} line {reader.line_num}: the image cell is empty")
        rows.append((image, [label for label in (part.strip() for part in cell.split(separator)) if label],
                     reader.line_num))  # fmt: skip
    return rows


def _image_path(root: Path, image: str, where: Path, line: int) -> Path:
    """The file ``image`` names under ``root``: a regular file, inside it."""
    relative = PurePosixPath(image.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise ZooError(f"data: {where} line {line}: {image} is not a path inside {root}; give paths relative to it")
    path = root / relative
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise ZooError(f"data: {where} line {line}: image {path} not found") from None
    if not stat.S_ISREG(mode):
        raise ZooError(f"data: {where} line {line}: {path} is not an image file (not a regular file)")
    return path
