"""The built-in ``jsonl`` logger: metrics.jsonl, one JSON object a line for each epoch.

Each line is ``{"epoch": ..., "step": ..., **metrics}``, and the whole file is rewritten
atomically after each epoch (by ``RunFolder.write_metrics``). zoo always writes it, whatever else
the recipe's ``log.to`` names. A resumed run's file holds its checkpoint's epochs, then the new ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...runs.folder import RunFolder


class JsonlLogger:
    """Each epoch's training and validation metrics as a line of metrics.jsonl."""

    def __init__(self) -> None:
        self._folder: RunFolder | None = None
        self._records: list[dict[str, Any]] = []

    def start(self, recipe: Mapping[str, Any], run: Path, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        self._folder = RunFolder(run)
        # A resumed run's file starts again from its checkpoint's records (never from what the file
        # holds, which may be damaged or hold epochs trained after the checkpoint).
        self._records = [dict(record) for record in history]

    def log(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        if epoch is None:  # metrics.jsonl holds epochs only
            return
        assert self._folder is not None, "start() comes before log()"
        self._records.append({"epoch": epoch, "step": step, **metrics})
        self._folder.write_metrics(self._records)

    def finish(self, results: Mapping[str, Any], files: Sequence[Path]) -> None:
        """Nothing is left to write: each epoch's line was written as it came."""
