"""The recipe's data as splits: its class subset relabelled, training/validation/test samples.

``load_splits`` loads the dataset plugin (checked against its contract, ``data.contract``),
selects ``data.classes``, and draws a stratified validation split and ``data.per_class``. A
training split that is a stream (``data.streams``) is a ``StreamSplit``, its other splits read whole.

The model is built for the data (``DataInput``): a tensor dataset fixes its channels, and its
size unless ``data.image_size`` resizes it; image files are converted and resized to the model.
A tensor dataset meets a model built for one size (a ViT) resized to that size.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..config.recipe import default_data_dir
from ..config.schema import DataConfig
from ..errors import ZooError, did_you_mean
from ..parallel import distributed
from ..plugins import _registry as registry
from .cache import DecodedImages
from .contract import DatasetFacts, check_dataset, facts
from .label_sets import label_set_splits
from .streams import Stream, StreamSplit, check_stream_settings

# data.image_size applies to every dataset (a tensor dataset is resized on the device); these to image files only.
IMAGE_KEYS = ("mean", "std", "interpolation", "crop_pct", "crop_mode", "auto_augment")


def class_weights(setting: str | list[float], splits: Splits) -> list[float]:
    """``loss.class_weights``: as listed, or for "balanced" n / (classes x n_c) over the training
    split (rarer classes weigh more; an image's weight averages 1)."""
    names = splits.label_names
    if setting != "balanced":
        if len(setting) != len(names):
            raise ZooError(f"loss.class_weights lists {len(setting)} weights for {len(names)} classes "
                           f"({', '.join(names)}); give one per class, in data.classes order")  # fmt: skip
        return list(setting)
    if splits.streaming:
        raise ZooError('loss.class_weights = "balanced" counts the training split\'s classes, which a stream '
                       "(data.args.streaming) cannot tell up front: list one weight per class instead")  # fmt: skip
    labels = splits.train.labels
    counts = torch.bincount(labels, minlength=len(names))
    if not counts.all():
        missing = names[int((counts == 0).nonzero()[0])]
        raise ZooError(f"loss.class_weights = balanced: class {missing} has no training image")
    return (len(labels) / (len(names) * counts.double())).tolist()


def data_root(config: DataConfig) -> Path:
    """``data.root``, else $ZOO_DATA_DIR, else ~/.cache/zoo/data."""
    return Path(config.root) if config.root else default_data_dir()


class Split(Dataset):
    """The samples ``indices`` of ``dataset``, labels renumbered to ``labels``, through ``transform``."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor, labels: torch.Tensor) -> None:
        self.dataset = dataset
        self.indices = indices
        self.labels = labels
        self.transform: Callable[[Any], torch.Tensor] | None = None
        self.decoded: DecodedImages | None = None  # the dataset's decoded cache, when data.cache uses one

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        sample, _ = self.dataset[int(self.indices[position])]
        if self.transform is not None:
            sample = self.transform(sample)
        label = self.labels[position]
        return sample, int(label) if label.dim() == 0 else label  # a multi-hot row for multi-label data


@dataclass
class Splits:
    train: Split | StreamSplit
    val: Split | None
    test: Split
    label_names: list[str]

    @property
    def splits(self) -> list[Split]:
        return [split for split in (self.train, self.val, self.test) if split is not None]

    @property
    def multi_label(self) -> bool:
        """Whether the labels are multi-hot rows (N x classes), each sample a set of labels."""
        return self.test.labels.dim() == 2

    @property
    def streaming(self) -> bool:
        """Whether the training split is a stream: no length, no random access, no labels up front."""
        return isinstance(self.train, StreamSplit)

    @property
    def images(self) -> bool:
        """Whether the splits hold PIL images, which need transforms (else tensors of their own size)."""
        return facts(self.train.dataset).gives_images


def load_splits(config: DataConfig, seed: int) -> Splits:
    """The recipe's data: its classes relabelled 0..n-1, a stratified validation split, per_class."""
    root = data_root(config)
    # Built once per node (one download, one scan of an image folder) and sent to the node's other ranks.
    train_set, test_set = distributed.from_node_main(
        lambda: tuple(registry.instantiate("dataset", config.dataset, config.args, "", root, split)
                      for split in ("train", "test"))
    )  # fmt: skip
    found = facts(train_set, config.dataset)
    own_val = found.validation if config.val_split > 0 else None  # the dataset's own, else held out of train
    streaming = isinstance(train_set, Stream)
    if streaming:
        check_stream_settings(config, own_val is not None)
    given = [*([] if streaming else [train_set]), test_set, *([own_val] if own_val is not None else [])]
    for dataset in given:  # a dataset with a transform of its own is checked without it
        if found.gives_images:
            dataset.transform = None  # each split gets its own (attach_transforms)
        check_dataset(config.dataset, dataset)
    gives_images = found.gives_images
    if not gives_images:
        misplaced = [key for key in IMAGE_KEYS if getattr(config, key) is not None]
        if misplaced:
            raise ZooError(
                f"data.{misplaced[0]} applies to image datasets (image_folder); '{config.dataset}' gives tensors "
                f"normalised its own way: remove data.{misplaced[0]}"
            )
    names = [str(name) for name in train_set.classes]  # the contract allows names of any type
    selected = select_classes(config.classes, names)
    if facts(train_set).label_sets:
        if config.per_class is not None:
            raise ZooError("data.per_class counts the images of each class, but multi-label images hold several "
                           "classes: remove data.per_class")  # fmt: skip
        parts = label_set_splits(train_set, test_set, len(names), selected, config.val_split, seed, own_val)
        datasets = (train_set, own_val if own_val is not None else train_set, test_set)
        train, val, test = (Split(data, *part) if part else None for data, part in zip(datasets, parts))
        if len(test) == 0:
            raise ZooError(f"dataset '{config.dataset}' has no test examples")
        return Splits(train, val, test, [names[i] for i in selected])
    relabel = torch.full((len(names),), -1, dtype=torch.long)
    relabel[torch.tensor(selected)] = torch.arange(len(selected))

    def split_of(dataset: Dataset, parts: Sequence[torch.Tensor] | None, targets: torch.Tensor) -> Split:
        indices = torch.cat(list(parts)).sort().values if parts else (relabel[targets] >= 0).nonzero().flatten()
        return Split(dataset, indices, relabel[targets[indices]])

    test = split_of(test_set, None, targets_of(test_set))
    if len(test) == 0:
        raise ZooError(f"dataset '{config.dataset}' has no test examples of the selected classes")
    if streaming:
        val = split_of(own_val, None, targets_of(own_val)) if own_val is not None else None
        return Splits(StreamSplit(train_set, relabel), val, test, [names[i] for i in selected])

    generator = torch.Generator().manual_seed(seed)
    train_targets = targets_of(train_set)
    _refuse_empty_classes(config, found, root, names, selected, train_targets)
    train_parts, val_parts = [], []
    per_class = config.per_class if isinstance(config.per_class, list) else [config.per_class] * len(selected)
    if len(per_class) != len(selected):
        raise ZooError(f"data.per_class lists {len(per_class)} counts for {len(selected)} classes; give one per "
                       "class, in data.classes order, or a single number")  # fmt: skip
    for class_index, wanted in zip(selected, per_class, strict=True):
        members = (train_targets == class_index).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = round(len(members) * config.val_split) if own_val is None else 0
        val_parts.append(members[:n_val])
        rest = members[n_val:]
        if wanted is not None:
            if wanted > len(rest):
                raise ZooError(
                    f"data.per_class = {wanted}, but class '{names[class_index]}' has only "
                    f"{len(rest)} training examples (after the validation split); lower data.per_class"
                )
            rest = rest[:wanted]
        if len(rest) == 0:
            raise ZooError(f"the training examples of class '{names[class_index]}' ({len(members)}) are all held "
                           f"out for validation by data.val_split = {config.val_split}: lower data.val_split")  # fmt: skip
        train_parts.append(rest)

    train = split_of(train_set, train_parts, train_targets)
    if own_val is not None:
        val = split_of(own_val, None, targets_of(own_val))
    elif config.val_split > 0:
        val = split_of(train_set, val_parts, train_targets)
    else:
        val = None
    return Splits(train, val, test, [names[i] for i in selected])


def _refuse_empty_classes(
    config: DataConfig, found: DatasetFacts, root: Path, names: list[str], selected: list[int], targets: torch.Tensor
) -> None:
    """Selected classes without a training example, named with where the data came from and the fix:
    the ones to drop from data.classes, or (integer labels number the classes 0..max, so a skipped
    value is a class of its own) a data.classes that selects the others."""
    counts = torch.bincount(targets, minlength=len(names))
    empty = [names[i] for i in selected if counts[i] == 0]
    if not empty:
        return
    listed = ", ".join(f"'{name}'" for name in empty)
    classes, have, them = ("class", "has", "it") if len(empty) == 1 else ("classes", "have", "them")
    if found.hub_dataset:  # the repo at the commit read, not data.root
        commit = (found.pinned_args or {}).get("revision")
        origin = found.hub_dataset + (f"@{commit}" if commit else "")
    else:  # a plugin's own data.args.path (hf's folder) names its data instead of data.root
        origin = str(config.args.get("path") or root)
    if config.classes is not None:
        raise ZooError(f"data.classes: {classes} {listed} {have} no training examples in dataset "
                       f"'{config.dataset}' ({origin}): remove {them} from data.classes")  # fmt: skip
    present = [names[i] for i in selected if counts[i] > 0]
    fix = f"data.classes = {json.dumps(present)}" if len(present) <= 20 else f"data.classes (the other {len(present)})"
    raise ZooError(f"dataset '{config.dataset}' ({origin}): {classes} {listed} {have} no training examples; "
                   f"select the classes that do with {fix}")  # fmt: skip


def select_classes(wanted: Sequence[int | str] | None, names: list[str]) -> list[int]:
    """Indices of the wanted classes (given as indices or names), in the order given."""
    if wanted is None:
        return list(range(len(names)))
    if not wanted:
        raise ZooError("data.classes is empty: it selects nothing; list some classes or remove the key")
    indices = []
    for item in wanted:
        if isinstance(item, int):
            named = names.index(str(item)) if str(item) in names else None
            if named is not None and named != item:  # folders named by numbers (ratings, years): which is meant?
                which = f"the index of class '{names[item]}'" if 0 <= item < len(names) else "no index here"
                raise ZooError(f'data.classes: {item} is {which} but the name of class {named}: write "{item}" '
                               "(a string) for the class of that name, or list the classes by name")  # fmt: skip
            if not 0 <= item < len(names):
                raise ZooError(f"data.classes: {item} is out of range (the dataset has classes 0..{len(names) - 1})")
            index = item
        elif item in names:
            index = names.index(item)
        else:
            raise ZooError(f"data.classes: no class named {item!r}{did_you_mean(item, names)}; classes: {names}")
        if index in indices:
            raise ZooError(f"data.classes: {item!r} is listed twice")
        indices.append(index)
    return indices


def targets_of(dataset: Dataset) -> torch.Tensor:
    """Every sample's label, from ``.targets`` when the dataset has it (no images are read then)."""
    targets = facts(dataset).targets
    if targets is None:
        targets = [label for _, label in dataset]
    return torch.as_tensor(targets, dtype=torch.long)


@dataclass(frozen=True)
class DataInput:
    """What the data fixes of the model's input; ``model.build_model`` builds the model for it."""

    channels: int | None  # a tensor dataset's; image files are converted to the model's channels
    size: tuple[int, int] | None  # data.image_size, else a tensor dataset's own; image files follow the model
    chosen: bool  # the size is data.image_size: a model built for one size (a ViT) is built for it too


def data_input(config: DataConfig, splits: Splits) -> DataInput:
    chosen = parse_image_size(config.image_size)
    if splits.images:
        return DataInput(None, chosen, chosen is not None)
    channels, height, width = tensor_shape(splits.train.dataset)
    return DataInput(channels, chosen or (height, width), chosen is not None)


def tensor_shape(dataset: Dataset) -> tuple[int, int, int]:
    """C x H x W of a tensor dataset's samples."""
    images = facts(dataset).images
    shape = tuple(images.shape[1:] if images is not None else dataset[0][0].shape)
    if len(shape) != 3:
        raise ZooError(f"the dataset's samples are tensors of shape {list(shape)}; zoo takes images, C x H x W")
    return shape


def parse_image_size(size: int | list[int] | None) -> tuple[int, int] | None:
    """``data.image_size`` (N or [HEIGHT, WIDTH]) as (height, width); None when unset."""
    if size is None:
        return None
    sizes = [size] * 2 if isinstance(size, int) else list(size)
    if len(sizes) != 2 or min(sizes) < 1:
        raise ZooError(f"data.image_size = {size!r}: write N or [HEIGHT, WIDTH] with positive numbers")
    return sizes[0], sizes[1]
