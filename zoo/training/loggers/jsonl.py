"""The built-in ``jsonl`` logger: metrics.jsonl, one JSON object a line for each epoch.

Each line is ``{"epoch": ..., "step": ..., **metrics}``, and the whole file is rewritten
atomically after each epoch (by ``RunFolder.write_metrics``). zoo always writes it, whatever else
the recipe's ``log.to`` names. A resumed run keeps the file's lines up to its checkpoint's step, so
a run folder whose metrics.jsonl was deleted keeps only the epochs trained after the resume.
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

    def start(self, recipe: Mapping[str, Any], run: Path, step: int) -> None:
        self._folder = RunFolder(run)
        # A resumed run keeps the epochs its checkpoint had finished; those after it train again.
        self._records = [record for record in self._folder.metrics if record["step"] <= step] if step else []

    def log(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        if epoch is None:  # metrics.jsonl holds epochs only
            return
        assert self._folder is not None, "start() comes before log()"
        self._records.append({"epoch": epoch, "step": step, **metrics})
        self._folder.write_metrics(self._records)

    def finish(self, results: Mapping[str, Any], files: Sequence[Path]) -> None:
        """Nothing is left to write: each epoch's line was written as it came."""
