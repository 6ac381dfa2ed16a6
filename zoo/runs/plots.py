"""Plots for the run folder, as PNG: loss and accuracy per epoch, learning rate, confusion matrix.

matplotlib's object API (Figure, no pyplot) renders with Agg and keeps no global state, so that the
curves can be drawn in a thread while the test split is evaluated (``training.finish``); it is
imported on first use (a second of start-up that commands without plots never pay).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _files
from .folder import RunFolder

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
CURVE_SIZE = (800, 500)  # pixels
MATRIX_SIZE = (700, 600)
LOSS, ACCURACY, LEARNING_RATE, CONFUSION = RunFolder.PLOTS


def _figure(size: tuple[int, int]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")


def _save(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    _files.atomic_write(path, buffer.getvalue())


def curves(
    path: Path, title: str, ylabel: str, series: dict[str, tuple[list[float], list[float]]], xlabel: str
) -> None:
    """A line plot of each named series (xs, ys) at ``path``."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(CURVE_SIZE)
    axes = figure.add_subplot()
    for label, (xs, ys) in series.items():
        axes.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=label)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one epoch: a tick at 1, not 0.945
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend()
    _save(figure, path)


def write_curves(folder: RunFolder, history: list[dict[str, Any]], learning_rates: list[float]) -> list[str]:
    """Write the run's curves (loss and accuracy per epoch, learning rate) into ``folder``; the file names written."""
    written = []
    epochs = [record["epoch"] for record in history]
    if history:
        for name, title, metric in ((LOSS, "Loss", "loss"), (ACCURACY, "Accuracy", "accuracy")):
            series = {
                split: (epochs, [record[f"{split}_{metric}"] for record in history])
                for split in ("train", "val")
                if f"{split}_{metric}" in history[0]
            }
            curves(folder.file(name), f"{title} per epoch", metric, series, "epoch")
            written.append(name)
    if learning_rates:
        steps = list(range(1, len(learning_rates) + 1))
        curves(
            folder.file(LEARNING_RATE), "Learning rate (head)", "learning rate", {"lr": (steps, learning_rates)}, "step"
        )
        written.append(LEARNING_RATE)
    return written


def write_confusion(folder: RunFolder, test: dict[str, Any] | None) -> list[str]:
    """Write the test split's confusion matrix into ``folder`` (single-label runs with a test pass); the names written."""
    if not test or "confusion_matrix" not in test:  # multi-label runs have none
        return []
    _confusion(folder.file(CONFUSION), test["confusion_matrix"], [row["label"] for row in test["per_class"]])
    return [CONFUSION]


def _confusion(path: Path, matrix: list[list[int]], labels: list[str]) -> None:
    figure = _figure(MATRIX_SIZE)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = range(len(labels))
    axes.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title="Confusion matrix (test split)")
    axes.set_xticklabels(labels, rotation=45 if max(map(len, labels)) > 3 else 0)
    axes.set_yticklabels(labels)
    if len(labels) <= 20:
        peak = max(max(row) for row in matrix) or 1
        for row, counts in enumerate(matrix):
            for column, count in enumerate(counts):
                color = "white" if count > peak / 2 else "black"
                axes.text(column, row, str(count), ha="center", va="center", color=color, fontsize=8)
    _save(figure, path)
