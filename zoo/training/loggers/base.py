"""The logger seam: what zoo tells a metric logger during a run.

A logger plugin is an entry point in the ``zoo.loggers`` group whose target, called with the
arguments of the recipe's ``[log.NAME]`` table, returns a ``MetricLogger``. zoo calls it on rank 0
only, in this order:

1. ``start`` once, before the first training step (also when a run is resumed);
2. ``log`` for each record: every ``train.log_every`` steps with the running training metrics
   (``epoch`` None), and at each epoch's end with the epoch's training and validation metrics
   (``epoch`` given: the record metrics.jsonl holds);
3. ``finish`` once, after results.json is written, whatever the run's end: ``results["state"]``
   says "finished", "interrupted" or "failed".

Metric names are the ones results.json and metrics.jsonl use (``train_loss``, ``val_accuracy``,
``lr``, ``images_per_second``, ...). A logger writes inside the run folder, or to its own service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class MetricLogger(Protocol):
    def start(self, recipe: Mapping[str, Any], run: Path, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        """Begin logging the run in the folder ``run``, made by the resolved ``recipe`` (as recipe.toml
        holds it). ``step`` is 0 for a new run, and the checkpoint's step when one is resumed: what
        was logged after that step is about to be logged again (replace it where the backend can:
        metrics.jsonl and the csv example do; TensorBoard event files keep both). ``history`` holds
        the epoch records logged up to ``step`` (the checkpoint's own; empty for a new run)."""

    def log(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        """Record ``metrics`` at optimiser step ``step``; ``epoch`` is given on an epoch's closing record."""

    def finish(self, results: Mapping[str, Any], files: Sequence[Path]) -> None:
        """The run is over: ``results`` is results.json's content and ``files`` the run folder's
        files worth keeping with it (results.json, the model card, the plots). Release everything."""
