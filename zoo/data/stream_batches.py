"""A stream's training batches (``zoo.data.streams``): an "epoch" is a fixed number of batches.

A stream has no length to make epochs of, so the run's ``train.max_steps`` is cut into
``train.epochs`` equal epochs: each ends with what an epoch ends with (validation every
``train.eval_every`` epochs, the epoch's log line and metrics, a checkpoint). The stream goes on from
one epoch to the next; a rank that reaches the end of its share reads it again from its start.

The rank's share is read here, in the main process, as the DataLoader asks for the next sample,
and its ``state_dict`` taken after each batch's last row: ``state`` is where the share was after
the last batch the trainer took, however far the workers (which only decode and transform) had
been sent ahead. Each sample's transform draws from (seed, epoch, position, rank), as map-style
batches do, so a resumed run repeats the unkilled one exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..errors import ZooError
from ..parallel import distributed
from .batches import Batches
from .preprocessing import Preprocessing
from .streams import Row, StreamSplit


class StreamBatches(Batches):
    """``(inputs, labels)`` batches of a stream's training split on ``device``, ``per_epoch`` an epoch."""

    def __init__(
        self,
        split: StreamSplit,
        per_epoch: int,
        batch_size: int,
        device: torch.device,
        preprocessing: Preprocessing,
        seed: int = 0,
        num_workers: int = 0,
        channels_last: bool = False,
    ) -> None:
        super().__init__(split, batch_size, device, preprocessing, shuffle=True, seed=seed, num_workers=num_workers,
                         channels_last=channels_last)  # fmt: skip
        self.per_epoch = per_epoch
        self.rows: Iterator[tuple[Row, int]] | None = None  # the share's rows, once open
        self.shard: Any = None
        self.row = 0  # the number of the share's next row
        # Where the share was after the last whole batch: the next row's number, the shard's state_dict.
        self.position: dict[str, Any] = {"row": 0, "shard": None}
        self.start: dict[str, Any] | None = None  # where to open the share (a checkpoint's position); None: its start
        self.after: dict[int, dict[str, Any]] = {0: self.position}  # the position after each batch of the epoch
        self.taken = 0  # batches of this epoch's the trainer took

    def __len__(self) -> int:
        return self.per_epoch

    @property
    def shard_size(self) -> int:
        return self.per_epoch * self.batch_size

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from batch ``start``: the stream's next ones (from a checkpoint's
        position, after ``load_state``)."""
        keys = self._keys(epoch, start * self.batch_size, (len(self) - start) * self.batch_size)
        self.after, self.taken = {0: self.position}, 0
        for batch in self._loaded(keys):
            self.after.pop(self.taken)  # only the batches the workers were sent ahead are kept
            self.taken += 1
            yield batch

    def state(self) -> dict[str, Any]:
        return {"stream": self.after[self.taken], "stream_files": self.split.dataset.files}

    def load_state(self, state: dict[str, Any]) -> None:
        if "stream_files" in state and state["stream_files"] != self.split.dataset.files:
            raise ZooError("--resume: the stream's files changed since this checkpoint (a file added, removed or "
                           "resized), so its saved position would name other rows: put the files back as they "
                           "were, or start a new run")  # fmt: skip
        saved = state["stream"]
        fresh = self.split.dataset.shard(distributed.rank(), distributed.world_size()).state_dict()
        at_start = saved["shard"] is None and saved["row"] == 0  # no row read yet
        if not at_start and not _same_layout(fresh, saved["shard"]):  # datasets would fail mid-run, or start again
            raise ValueError("the stream's saved position is not one of this dataset's shards (damaged, or the "
                             "dataset's files changed)")  # fmt: skip
        self.position = self.start = {"row": int(saved["row"]), "shard": saved["shard"]}
        self.after, self.taken, self.rows = {0: self.position}, 0, None

    def _keys(self, epoch: int, first: int, count: int) -> Iterator[tuple[Row, int]]:
        """The next ``count`` rows, each with its transform's seed (``first``: the epoch's position of
        the first); where the share is after each batch, in ``after``."""
        for number in range(count):
            row = self._next()
            if (number + 1) % self.batch_size == 0:  # before it is sent: the trainer may checkpoint right after
                self.position = {"row": self.row, "shard": self.shard.state_dict()}
                self.after[(number + 1) // self.batch_size] = self.position
            yield row, self._seed(epoch, first + number)

    def _next(self) -> Row:
        """The share's next row, from its start again after its end."""
        while True:
            if self.rows is None:
                self.rows = self._open()
            found = next(self.rows, None)
            if found is not None:
                row, number = found
                self.row = number + 1
                return row
            if self.row == 0:  # read from its start, and nothing in it
                rank, ranks = distributed.rank(), distributed.world_size()
                share = f"rank {rank}'s share of the stream" if ranks > 1 else "the stream"
                raise ZooError(f"data: {share} holds no rows of the selected classes; choose other classes "
                               "(data.classes), or fewer ranks")  # fmt: skip
            self.rows = None  # again from its start

    def _open(self) -> Iterator[tuple[Row, int]]:
        rank, ranks = distributed.rank(), distributed.world_size()
        self.shard = self.split.dataset.shard(rank, ranks)
        self.row = 0
        if self.start is not None:
            self.shard.load_state_dict(self.start["shard"])
            self.row, self.start = self.start["row"], None
        return self.split.rows(self.shard, self.row, rank, ranks)


def _same_layout(fresh: Any, saved: Any) -> bool:
    """Whether ``saved`` is laid out as the ``fresh`` state of the same shard is: the same keys and list
    lengths, values of the same types (None, where a state has nothing yet, matches anything)."""
    if isinstance(fresh, dict):
        return (
            isinstance(saved, dict)
            and fresh.keys() == saved.keys()
            and all(_same_layout(fresh[key], saved[key]) for key in fresh)
        )
    if isinstance(fresh, list):
        return isinstance(saved, list) and len(fresh) == len(saved) and all(map(_same_layout, fresh, saved))
    return fresh is None or saved is None or type(fresh) is type(saved)
