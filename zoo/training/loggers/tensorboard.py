"""The built-in ``tensorboard`` logger: TensorBoard event files in the run folder's tensorboard/.

Tags turn the first underscore into a slash (``train_loss`` -> ``train/loss``, ``val_accuracy`` ->
``val/accuracy``) so that TensorBoard groups a split's metrics. Epoch records are plotted against
the epoch; records logged mid-epoch against the step, under ``step/``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ZooError
from ...runs.folder import RunFolder

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


class TensorBoardLogger:
    """TensorBoard event files in RUN/tensorboard: every metric of every epoch."""

    def __init__(self) -> None:
        # Checked when the logger is chosen, before any training; imported (slowly) only in start().
        if importlib.util.find_spec("tensorboard") is None:
            raise ZooError("the tensorboard logger needs TensorBoard: pip install 'zoo[tensorboard]'")
        self._writer: SummaryWriter | None = None

    def start(self, recipe: Mapping[str, Any], run: Path, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        events = RunFolder(run).file(RunFolder.TENSORBOARD)
        # zoo's own name in zoo's own folder: anything but a real folder there (a link out of the run,
        # a file, a FIFO) is replaced, never written through, as every run-folder file is.
        if events.is_symlink() or (events.exists() and not events.is_dir()):
            events.unlink()
        self._writer = SummaryWriter(str(events))

    def log(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        assert self._writer is not None, "start() comes before log()"
        for key, value in metrics.items():
            tag = key.replace("_", "/", 1)
            if epoch is None:
                self._writer.add_scalar(f"step/{tag}", value, step)
            else:
                self._writer.add_scalar(tag, value, epoch)

    def finish(self, results: Mapping[str, Any], files: Sequence[Path]) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
