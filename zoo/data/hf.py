"""The built-in ``hf`` dataset plugin: image classification data read through Hugging Face ``datasets``.

A Hub dataset repo (at a commit, which the run records), a ``save_to_disk`` folder or a local folder
``load_dataset`` reads (``zoo.data.hf_source``). The image and label columns are found from the
features, the labels checked and numbered once, and every image's header read up front, so that bad
data is one line naming the split and row before any training. Samples are PIL images through a
transform, as ``image_folder``'s; ``fingerprint`` keys the decoded cache (``data.cache``).

With ``streaming = true`` the training split is a ``HuggingFaceStream`` (``zoo.data.streams``): read
in order as its files are fetched, each rank its own shard; its rows are checked as they are read.
The validation and test splits are read whole, as they are without streaming; label names that
are no ClassLabel's come from the test split then (the training split is never read whole).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import ZooError
from . import hf_source
from .images import image_bytes, image_file
from .streams import Stream

# Label columns zoo numbers itself: integers as they are, strings in sorted order.
INTEGERS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
STRINGS = ("string", "large_string")


def hf_dataset(
    root: Path,
    split: str,
    path: str | None = None,
    revision: str | None = None,
    name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    val_split: str | None = None,
    streaming: bool = False,
) -> HuggingFaceDataset | HuggingFaceStream:
    """A Hugging Face dataset: a Hub dataset repo id, a save_to_disk folder or a folder load_dataset reads.

    ``revision`` (Hub only): a branch, tag or commit, resolved to the commit the run records.
    ``name``: the dataset's config. ``image_column`` / ``label_column``: default, the one ``Image``
    and the one ``ClassLabel`` feature, else the column ``label`` (an image_column of paths is read too). Labels may
    be a ClassLabel (its names), integers (0..max of the training split) or strings (sorted).
    ``train_split`` / ``test_split`` name the splits read; ``val_split`` the one validated on (default:
    ``validation`` where there is one; without one, data.val_split holds out part of the training split).
    ``path`` defaults to ``root`` (data.root); a relative one is the folder beside the recipe file
    where there is one, else taken from the current folder. ``streaming``: the training split is read as a stream
    (a dataset too big to download; it needs train.max_steps), label names that are no ClassLabel's
    from the test split.

    The split a ``HuggingFaceDataset``; the training split streamed a ``HuggingFaceStream``.
    """
    args = HubDatasetArgs(str(root) if path is None else path, revision, name, image_column, label_column,
                          train_split, test_split, val_split, streaming)  # fmt: skip
    if streaming and split == "train":
        return HuggingFaceStream(args)
    return HuggingFaceDataset(split, args)


@dataclass(frozen=True)
class HubDatasetArgs:
    """``hf_dataset``'s arguments (described there), ``path`` resolved: every split is read with them."""

    path: str
    revision: str | None = None
    name: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    val_split: str | None = None
    streaming: bool = False

    def __post_init__(self) -> None:
        # One split read for two purposes is a silent leak: a test of the images trained on, or the best
        # epoch chosen on the test split (whose accuracy then flatters the model).
        for key, other, fix in (
            ("test_split", "train_split", "name a split of its own"),
            ("val_split", "train_split", "leave it out to hold out part of the training split (data.val_split)"),
            ("val_split", "test_split", "leave it out to hold out part of the training split (data.val_split)"),
        ):
            if getattr(self, key) is not None and getattr(self, key) == getattr(self, other):
                raise ZooError(f"data.args.{key} = {getattr(self, key)!r} is data.args.{other} too: {fix}")


class HuggingFaceDataset(Dataset):
    """A split of a Hugging Face dataset, read whole (streamed, the validation and test splits are read
    whole too)."""

    def __init__(self, split: str, args: HubDatasetArgs) -> None:
        if split not in ("train", "test", "val"):
            raise ValueError(f"split must be 'train', 'test' or 'val', got {split!r}")
        source = hf_source.load(args.path, args.revision, args.name, args.streaming)
        self.split = {"train": args.train_split, "test": args.test_split, "val": args.val_split or "validation"}[split]
        table = source.split(self.split, f"{split}_split")
        image, label = _columns(table.features, args.image_column, args.label_column, source.where, self.split)
        labelled_by = (args.test_split, "test_split") if args.streaming else (args.train_split, "train_split")
        self.classes = _classes(source, *labelled_by, label)
        self.targets = _labels(table, label, self.classes, f"{source.where}, split '{self.split}'")
        if split == "train" and (args.val_split is not None or "validation" in source.splits):
            self.validation = HuggingFaceDataset("val", args)
        self.image_column = image
        self.data = _image_cells(table.select_columns([image]), image)
        self.where = source.where
        self.hub_dataset = source.repo
        if source.commit is not None:
            self.pinned_args = {"revision": source.commit}
        self.fingerprint = f"{source.where}|{args.name}|{self.split}|{image}|{self.data._fingerprint}"
        self.transform: Any = None
        for row in range(len(self.data)):  # headers only: a cell that is no image is named now, not mid-training
            with self._image(row, decode=False):
                pass

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        with self._image(index) as image:
            pass
        return (self.transform(image) if self.transform is not None else image), self.targets[index]

    def _image(self, row: int, decode: bool = True) -> Any:
        return _opened(
            self.data[row][self.image_column], f"data: {self.where}, split '{self.split}', row {row}", decode
        )


class HuggingFaceStream(Stream):
    """The training split of an ``hf`` dataset streamed (``hf_dataset``'s arguments): rows in order,
    each rank its own shard (``datasets.distributed.split_dataset_by_node``), checked as read."""

    def __init__(self, args: HubDatasetArgs) -> None:
        source = hf_source.load(args.path, args.revision, args.name, streaming=True)
        self.split = args.train_split
        stream = source.stream(self.split, "train_split")
        features = source.features(stream, self.split)
        image, label = _columns(features, args.image_column, args.label_column, source.where, self.split)
        if _is_sequence(features[label]):
            raise ZooError(f"data.args.streaming: column {label!r} holds label sets (multi-label data), which zoo "
                           "reads whole only: remove data.args.streaming")  # fmt: skip
        self.classes = _classes(source, args.test_split, "test_split", label)
        self.numbers = {name: number for number, name in enumerate(self.classes)} if _strings(features[label]) else None
        self.columns = (image, label)
        self.stream = _image_cells(stream.select_columns([image, label]), image)
        if args.val_split is not None or "validation" in source.splits:
            self.validation = HuggingFaceDataset("val", args)
        self.origin = source.where
        self.files = source.files[self.split] if source.files else None
        self.hub_dataset = source.repo
        if source.commit is not None:
            self.pinned_args = {"revision": source.commit}
        self.transform: Any = None

    def shard(self, rank: int, ranks: int) -> Any:
        from datasets.distributed import split_dataset_by_node

        # A new IterableDataset each time, one rank or more: a state loaded into it stays in it.
        share = f" (rank {rank}'s share)" if ranks > 1 else ""
        return _Share(
            split_dataset_by_node(self.stream, rank, ranks), f"data: {self.origin}, split '{self.split}'{share}"
        )

    def item(self, row: dict[str, Any], where: str) -> tuple[Any, int]:
        image, label = self.columns
        value = row[label]
        if value is None:
            raise ZooError(f"{where}: no label in column {label!r}; fill it in or drop the row")
        return row[image], _number(value, self.numbers, self.classes, label, where)

    def image(self, stored: Any, where: str) -> Any:
        with _opened(stored, where) as image:
            return image

    def where(self, row: int, rank: int, ranks: int) -> str:
        share = f" of rank {rank}'s share ({ranks} ranks)" if ranks > 1 else ""
        return f"data: {self.origin}, split '{self.split}', row {row}{share}"


class _Share:
    """A rank's share of a stream (a ``datasets.IterableDataset``), a file it cannot read one line."""

    def __init__(self, dataset: Any, where: str) -> None:
        self.dataset = dataset
        self.where = where

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import httpx2
        from pyarrow import ArrowException

        try:
            yield from self.dataset
        except (ArrowException, OSError, httpx2.TransportError) as exc:  # a damaged file; the Hub gone mid-stream
            raise ZooError(f"{self.where}: datasets cannot read it ({type(exc).__name__}: "
                           f"{hf_source.first_line(exc)})") from None  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)


def _opened(cell: dict[str, Any] | None, where: str, decode: bool = True) -> Any:
    """The image of a cell as stored ({"bytes", "path"}), opened safely (``zoo.data.images``)."""
    if cell is None or (cell.get("bytes") is None and cell.get("path") is None):
        raise ZooError(f"{where} has no image; drop the row or fill it in")
    if cell.get("bytes") is not None:
        return image_bytes(cell["bytes"], where, decode)
    return image_file(Path(cell["path"]), decode)


def _columns(features: dict[str, Any], image: str | None, label: str | None, where: str, split: str) -> tuple[str, str]:
    """The image and label columns: as named (checked), else the one Image and the one ClassLabel feature."""
    from datasets import ClassLabel, Image

    columns = ", ".join(features)
    found = []
    for key, given, kind, form in (("image_column", image, Image, "Image"), ("label_column", label, ClassLabel, "ClassLabel")):  # fmt: skip
        if given is not None:
            if given not in features:
                raise ZooError(f"data.args.{key} = {given!r}: {where}, split '{split}', has no such column; "
                               f"its columns: {columns}")  # fmt: skip
            found.append(given)
            continue
        matches = [column for column, feature in features.items() if isinstance(_inner(feature), kind)]
        if not matches and kind is ClassLabel:  # integers or strings, in the column named so by convention
            matches = [column for column in features if column in ("label", "labels")]
        if len(matches) != 1:
            many = f"{len(matches)} {form} columns ({', '.join(matches)})" if matches else f"no {form} column"
            raise ZooError(f"data.args.{key}: {where}, split '{split}', has {many}; name one of its columns "
                           f"({columns}) in data.args.{key}")  # fmt: skip
        found.append(matches[0])
    if found[0] == found[1]:
        raise ZooError(f"data.args: image_column and label_column both name {found[0]!r}; name two columns")
    image_feature = features[found[0]]
    if not isinstance(image_feature, Image) and _dtype(image_feature) not in STRINGS:
        raise ZooError(f"data.args.image_column = {found[0]!r} holds {_describe(image_feature)}, not images or "
                       f"image paths; its columns: {columns}")  # fmt: skip
    return found[0], found[1]


def _image_cells(table: Any, column: str) -> Any:
    """``table`` (a Dataset or a stream) with ``column`` (images, or image paths) as undecoded image
    cells ({"bytes", "path"}): zoo opens them itself, safely."""
    from datasets import Image

    return table.cast_column(column, Image(decode=False))


def _classes(source: hf_source.Source, split: str, key: str, label: str) -> list[str]:
    """The label names, from ``split`` (the training split; the test split of a stream), which
    ``data.args.<key>`` names: a ClassLabel's names, 0..max of integers, sorted strings."""
    if (split, label) not in source.classes:
        from datasets import ClassLabel

        table = source.split(split, key)
        feature = table.features.get(label)
        where = f"{source.where}, split '{split}'"
        if isinstance(_inner(feature), ClassLabel):  # a ClassLabel, or a Sequence of them (label sets)
            names = [str(name) for name in _inner(feature).names]
        elif _dtype(feature) in INTEGERS:
            values = _column(table, label, where)
            names = [str(value) for value in range(max(values, default=-1) + 1)]
        elif _dtype(feature) in STRINGS:
            names = sorted(set(_column(table, label, where)))
        else:
            raise ZooError(f"data.args.label_column = {label!r} holds {_describe(feature)}; labels must be a "
                           f"ClassLabel, integers or strings: name another column in data.args.label_column")  # fmt: skip
        if not names:
            raise ZooError(f"data: {where} has no labelled rows")
        source.classes[split, label] = names
    return source.classes[split, label]


def _inner(feature: Any) -> Any:
    """A Sequence's (a List's) feature, else ``feature`` itself: a Sequence(ClassLabel) holds label sets."""
    return feature.feature if _is_sequence(feature) else feature


def _is_sequence(feature: Any) -> bool:
    return type(feature).__name__ in ("List", "Sequence", "LargeList")


def _labels(table: Any, label: str, classes: Sequence[str], where: str) -> list[int] | list[tuple[int, ...]]:
    """Every row's label as an index into ``classes`` (a tuple of them for label sets); one out of range
    (or unknown) is named by its row."""
    values = _column(table, label, where)
    if _is_sequence(table.features[label]):  # a Sequence(ClassLabel): multi-label data
        for row, labels in enumerate(values):
            if not labels or not all(0 <= number < len(classes) for number in labels):
                raise ZooError(f"data: {where}, row {row}: labels {labels!r} must be one or more of the "
                               f"{len(classes)} classes ({_shown(classes)}) of column {label!r}")  # fmt: skip
        return [tuple(labels) for labels in values]
    numbers = {name: number for number, name in enumerate(classes)} if _strings(table.features[label]) else None
    return [_number(value, numbers, classes, label, f"data: {where}, row {row}") for row, value in enumerate(values)]


def _number(value: Any, numbers: dict[str, int] | None, classes: Sequence[str], column: str, where: str) -> int:
    """A label as an index into ``classes``: ``numbers`` maps strings; one out of range (or unknown) is named."""
    number = numbers.get(value, -1) if numbers is not None else value
    if not 0 <= number < len(classes):
        raise ZooError(f"{where}: label {value!r} is outside the {len(classes)} classes ({_shown(classes)}) of "
                       f"column {column!r}; fix the row or drop it")  # fmt: skip
    return number


def _strings(feature: Any) -> bool:
    return _dtype(feature) in STRINGS


def _column(table: Any, label: str, where: str) -> list[Any]:
    values = table.with_format("arrow")[label].to_pylist()  # through the dataset's indices, if it has any
    if None in values:
        raise ZooError(
            f"data: {where}, row {values.index(None)}: no label in column {label!r}; fill it in or drop the row"
        )
    return values


def _dtype(feature: Any) -> str | None:
    return getattr(feature, "dtype", None) if type(feature).__name__ == "Value" else None


def _describe(feature: Any) -> str:
    return _dtype(feature) or type(feature).__name__


def _shown(classes: Sequence[str]) -> str:
    return ", ".join(classes) if len(classes) <= 10 else f"{', '.join(classes[:10])}, ..."
