"""The csv logger: every metric zoo logs as a row of RUN/metrics.csv (step, epoch, name, value)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COLUMNS = ["step", "epoch", "name", "value"]


class CsvLogger:
    """Metrics as rows of metrics.csv in the run folder: one row per metric, so columns never change."""

    def __init__(self, filename: str = "metrics.csv") -> None:
        if Path(filename).name != filename or filename in (".", ".."):
            raise ValueError(f"filename must be a file name inside the run folder, got {filename!r}")
        self.filename = filename
        self.path: Path | None = None

    def start(self, recipe: Mapping[str, Any], run: Path, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        self.path = run / self.filename
        kept = []
        if step and self.path.is_file():  # resumed: rows after the checkpoint's step are logged again
            with self.path.open(newline="") as file:
                kept = [row for row in csv.DictReader(file) if int(row["step"]) <= step]
        with self.path.open("w", newline="") as file:
            writer = csv.DictWriter(file, COLUMNS)
            writer.writeheader()
            writer.writerows(kept)

    def log(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        assert self.path is not None, "start() comes before log()"
        with self.path.open("a", newline="") as file:
            csv.writer(file).writerows(
                [step, "" if epoch is None else epoch, name, value] for name, value in metrics.items()
            )

    def finish(self, results: Mapping[str, Any], files: Sequence[Path]) -> None:
        """Each row was written as it came."""
