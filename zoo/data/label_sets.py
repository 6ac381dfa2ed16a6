"""Multi-label data as splits: each sample's set of labels as a multi-hot row (N x classes, float 0/1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from ..errors import ZooError
from .contract import facts


def multi_hot(label_sets: Sequence[Sequence[int]], classes: int) -> torch.Tensor:
    """``label_sets`` as an N x ``classes`` float tensor of 0 and 1."""
    rows = torch.zeros(len(label_sets), classes)
    for row, labels in enumerate(label_sets):
        rows[row, list(labels)] = 1.0
    return rows


Part = tuple[torch.Tensor, torch.Tensor]  # a split's sample indices and their multi-hot labels


def label_set_splits(
    train_set: Dataset,
    test_set: Dataset,
    classes: int,
    selected: list[int],
    val_split: float,
    seed: int,
    own_val: Dataset | None = None,
) -> tuple[Part, Part | None, Part]:
    """The training, validation (``own_val``'s samples, else a seeded ``val_split`` of the training
    samples; None without) and test samples with their labels, over the ``selected`` of ``classes``
    classes, in that order."""
    train_labels = _label_rows(train_set, classes, selected)
    test_labels = _label_rows(test_set, classes, selected)
    test = (torch.arange(len(test_labels)), test_labels)
    if own_val is not None:
        val_labels = _label_rows(own_val, classes, selected)
        return (torch.arange(len(train_labels)), train_labels), (torch.arange(len(val_labels)), val_labels), test
    order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed))
    n_val = round(len(order) * val_split)
    val_indices, train_indices = order[:n_val].sort().values, order[n_val:].sort().values
    if len(train_indices) == 0:
        raise ZooError(f"data.val_split = {val_split} leaves no training images; lower it")
    val = (val_indices, train_labels[val_indices]) if val_split > 0 else None
    return (train_indices, train_labels[train_indices]), val, test


def _label_rows(dataset: Dataset, classes: int, selected: list[int]) -> torch.Tensor:
    """Every sample's labels of ``dataset`` as multi-hot rows over the ``selected`` classes."""
    targets = facts(dataset).targets
    if targets is None:
        targets = [label for _, label in dataset]
    # A split whose samples all hold one label may give them as int labels.
    sets = [labels if isinstance(labels, tuple | list | set | frozenset) else (int(labels),) for labels in targets]
    return multi_hot(sets, classes)[:, selected]
