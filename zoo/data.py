"""Data: the recipe's class subset, training/validation/test splits, and batches on the device.

Two paths to the model. A dataset that holds its samples in memory as one uint8 tensor
(``images``: N x C x H x W, ``targets``: N, as the built-in ``mnist`` does) is batched straight
from that tensor, on the device, normalised per batch with no per-item Python work. Any other
dataset goes through a DataLoader with workers (and pinned memory on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from . import distributed, registry
from .errors import ZooError, did_you_mean
from .recipe import DataConfig, check_args, default_data_dir


def data_root(config: DataConfig) -> Path:
    """``data.root``, else $ZOO_DATA_DIR, else ~/.cache/zoo/data."""
    return Path(config.root) if config.root else default_data_dir()


def is_in_memory(dataset: Dataset) -> bool:
    images = getattr(dataset, "images", None)
    return isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4


class Split(Dataset):
    """The samples ``indices`` of ``dataset``, with their labels renumbered to ``labels``."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor, labels: torch.Tensor) -> None:
        self.dataset = dataset
        self.indices = indices
        self.labels = labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        sample, _ = self.dataset[int(self.indices[position])]
        return sample, int(self.labels[position])


@dataclass
class Splits:
    train: Split
    val: Split | None
    test: Split
    label_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, ...]  # C, H, W


def load_splits(config: DataConfig, seed: int) -> Splits:
    """The recipe's data: its classes relabelled 0..n-1, a stratified validation split, per_class."""
    root = data_root(config)
    factory = registry.get("dataset", config.dataset).load()
    check_args(factory, config.args, "data.args", positional=("root", "split"))
    train_set, test_set = (_create(factory, root, split, config) for split in ("train", "test"))
    names = [str(name) for name in getattr(train_set, "classes", [])]
    if not names:
        raise ZooError(f"dataset '{config.dataset}' has no .classes: a dataset plugin must list its label names")
    selected = select_classes(config.classes, names)
    relabel = torch.full((len(names),), -1, dtype=torch.long)
    relabel[torch.tensor(selected)] = torch.arange(len(selected))

    generator = torch.Generator().manual_seed(seed)
    train_targets = targets_of(train_set)
    train_parts, val_parts = [], []
    for class_index in selected:
        members = (train_targets == class_index).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = round(len(members) * config.val_split)
        val_parts.append(members[:n_val])
        rest = members[n_val:]
        if config.per_class is not None:
            if config.per_class > len(rest):
                raise ZooError(
                    f"data.per_class = {config.per_class}, but class '{names[class_index]}' has only "
                    f"{len(rest)} training examples (after the validation split); lower data.per_class"
                )
            rest = rest[: config.per_class]
        if len(rest) == 0:
            raise ZooError(f"data.classes: class '{names[class_index]}' has no training examples in {root}")
        train_parts.append(rest)

    def split_of(dataset: Dataset, parts: Sequence[torch.Tensor] | None, targets: torch.Tensor) -> Split:
        indices = torch.cat(list(parts)).sort().values if parts else (relabel[targets] >= 0).nonzero().flatten()
        return Split(dataset, indices, relabel[targets[indices]])

    train = split_of(train_set, train_parts, train_targets)
    val = split_of(train_set, val_parts, train_targets) if config.val_split > 0 else None
    test = split_of(test_set, None, targets_of(test_set))
    if len(test) == 0:
        raise ZooError(f"dataset '{config.dataset}' has no test examples of the selected classes")
    input_size = tuple(train_set.images.shape[1:] if is_in_memory(train_set) else train_set[0][0].shape)
    channels = input_size[0]
    return Splits(
        train=train,
        val=val,
        test=test,
        label_names=[names[i] for i in selected],
        mean=tuple(getattr(train_set, "mean", (0.0,) * channels)),
        std=tuple(getattr(train_set, "std", (1.0,) * channels)),
        input_size=input_size,
    )


def _create(factory: Callable[..., Dataset], root: Path, split: str, config: DataConfig) -> Dataset:
    try:
        return factory(root, split, **config.args)
    except ValueError as exc:
        raise ZooError(f"data: dataset '{config.dataset}' rejected its arguments: {exc}") from exc


def select_classes(wanted: Sequence[int | str] | None, names: list[str]) -> list[int]:
    """Indices of the wanted classes (given as indices or names), in the order given."""
    if wanted is None:
        return list(range(len(names)))
    if not wanted:
        raise ZooError("data.classes is empty: it selects nothing; list some classes or remove the key")
    indices = []
    for item in wanted:
        if isinstance(item, int):
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
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [label for _, label in dataset]
    return torch.as_tensor(targets, dtype=torch.long)


class Batches:
    """``(inputs, labels)`` batches of one split on ``device``; shuffled batches depend on (seed, epoch)."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.in_memory = is_in_memory(split.dataset)
        if self.in_memory:
            # (x / 255 - mean) / std as one multiply and one subtract per batch.
            std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self.scale = 1.0 / (255.0 * std_t)
            self.shift = mean_t / std_t
            self.images = split.dataset.images[split.indices].to(device)
            self.labels = split.labels.to(device)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return -(-self.shard_size // self.batch_size)

    @property
    def shard_size(self) -> int:
        """Samples per epoch on this rank: training shards are padded to the same size on every rank."""
        ranks, size = distributed.world_size(), len(self.split)
        return -(-size // ranks) if self.shuffle else len(range(distributed.rank(), size, ranks))

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``, from batch number ``start`` (to resume inside an epoch)."""
        order = torch.arange(len(self.split))
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(len(self.split), generator=generator)
        # Every rank draws the same order and takes its own share of it.
        order = distributed.shard(order, pad=self.shuffle)[start * self.batch_size :]
        if self.in_memory:
            yield from self._from_memory(order)
        else:
            yield from self._from_loader(order)

    def _from_memory(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sequential = not self.shuffle and len(order) == len(self.split)
        order = order.to(self.device)
        for start in range(0, len(order), self.batch_size):
            if sequential:  # slices, no gather
                images = self.images[start : start + self.batch_size]
                labels = self.labels[start : start + self.batch_size]
            else:
                chosen = order[start : start + self.batch_size]
                images, labels = self.images[chosen], self.labels[chosen]
            inputs = images.float().mul_(self.scale).sub_(self.shift)
            yield inputs.contiguous(memory_format=self.memory_format), labels

    def _from_loader(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            self.split,
            batch_size=self.batch_size,
            sampler=order.tolist(),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for inputs, labels in loader:
            inputs = inputs.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            yield inputs, labels.to(self.device, non_blocking=True)
