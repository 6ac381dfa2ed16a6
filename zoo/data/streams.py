"""A training split read as a stream: a dataset too big to download, read in order as it arrives.

A dataset plugin's training split may be a ``Stream`` (``hf`` with ``streaming = true``): no
length, no random access, its classes known from its features. Each rank reads its own share
(``Stream.shard``), in order, in its main process, where the share's ``state_dict`` is taken after
every batch; DataLoader workers only decode and transform the images they are sent. So a
checkpoint holds where the rank's share was after the last batch trained, whatever the workers
had read ahead, and a resumed run goes on from that sample (``zoo.data.stream_batches``).

What needs the whole split up front cannot be had from a stream, and is refused in one line:
``data.per_class``, the balanced sampler, ``data.cache``, a validation split held out of training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..config.schema import DataConfig
from ..errors import ZooError

Row = tuple[Any, int, str]  # an image as stored (what a worker decodes), its label, where it is (for errors)


class Stream(ABC):
    """A dataset plugin's training split as a stream. Besides these, it has ``classes`` and takes a
    ``transform`` as any image dataset does; ``validation``, ``hub_dataset`` and ``pinned_args``
    as the dataset contract describes them (``zoo.data.contract``)."""

    classes: Sequence[str]
    transform: Any = None
    # What the shards' positions index, as JSON (hf: a digest of a local training split's file names and
    # sizes): kept in each checkpoint, a resume over other files is refused. None where nothing can
    # change (a Hub commit).
    files: Any = None

    @abstractmethod
    def shard(self, rank: int, ranks: int) -> Any:
        """Rank ``rank``'s share of ``ranks``: an iterable of rows with ``state_dict()`` and
        ``load_state_dict()`` (a ``datasets.IterableDataset``), disjoint from the other ranks' shares."""

    @abstractmethod
    def item(self, row: Any, where: str) -> tuple[Any, int]:
        """A row's image as stored (picklable: it is sent to a DataLoader worker) and its label; a
        label out of range is a ZooError saying ``where``."""

    @abstractmethod
    def image(self, stored: Any, where: str) -> Image.Image:
        """The image ``item`` gave, decoded; one that does not decode is a ZooError saying ``where``."""

    @abstractmethod
    def where(self, row: int, rank: int, ranks: int) -> str:
        """Row ``row`` of rank ``rank``'s share, in words for an error (the split and the row)."""


def check_stream_settings(config: DataConfig, has_validation: bool) -> None:
    """One line for the data settings that need the whole training split up front."""
    refused = (
        ("data.per_class", config.per_class is not None, "counts each class's images"),
        ('data.sampler = "balanced"', config.sampler == "balanced", "draws images by how rare their class is"),
        ("data.cache", config.cache not in (None, "none"), "decodes every image up front"),
    )
    for key, set_, why in refused:
        if set_:
            raise ZooError(f"{key} {why}, which a stream (data.args.streaming) cannot tell up front: remove {key}, "
                           "or data.args.streaming")  # fmt: skip
    if config.val_split > 0 and not has_validation:
        raise ZooError("data.val_split holds out part of the training split, which a stream (data.args.streaming) "
                       "cannot: set data.val_split = 0, or name a validation split in data.args.val_split")  # fmt: skip


class StreamSplit(Dataset):
    """A stream's training split on this rank: its rows in order (``rows``), labels renumbered to
    the selected classes (``relabel``: -1 for a class left out, whose rows are skipped); a DataLoader
    worker turns a row into (image through ``transform``, label) by ``self[row]``."""

    def __init__(self, stream: Stream, relabel: torch.Tensor) -> None:
        self.dataset = stream
        self.relabel = relabel.tolist()
        self.transform: Any = None
        self.decoded = None  # no decoded cache: ``Batches`` asks

    def __getitem__(self, row: Row) -> tuple[Any, int]:
        stored, label, where = row
        image = self.dataset.image(stored, where)
        return (self.transform(image) if self.transform is not None else image), label

    def rows(self, shard: Any, first: int, rank: int, ranks: int) -> Iterator[tuple[Row, int]]:
        """``shard``'s rows of the selected classes, each with its number in the share (from ``first``)."""
        for number, row in enumerate(shard, start=first):
            where = self.dataset.where(number, rank, ranks)
            stored, label = self.dataset.item(row, where)
            if self.relabel[label] >= 0:
                yield (stored, self.relabel[label], where), number
