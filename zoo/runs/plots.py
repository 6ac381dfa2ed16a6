"""Plots for the run folder, as PNG: loss and accuracy per epoch, learning rate, confusion matrix.

matplotlib's object API (Figure, no pyplot) renders with Agg and keeps no global state.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .. import _files
from .folder import RunFolder

DPI = 100
CURVE_SIZE = (800, 500)  # pixels
MATRIX_SIZE = (700, 600)
LOSS, ACCURACY, LEARNING_RATE, CONFUSION = RunFolder.PLOTS


def _figure(size: tuple[int, int]) -> Figure:
    return Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")


def _save(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    _files.atomic_write(path, buffer.getvalue())


def _curves(
    path: Path, title: str, ylabel: str, series: dict[str, tuple[list[float], list[float]]], xlabel: str
) -> None:
    figure = _figure(CURVE_SIZE)
    axes = figure.add_subplot()
    for label, (xs, ys) in series.items():
        axes.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=label)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend()
    _save(figure, path)


def write_plots(
    folder: RunFolder, history: list[dict[str, Any]], learning_rates: list[float], test: dict[str, Any] | None
) -> list[str]:
    """Write the run's plots into ``folder``; returns the file names written."""
    written = []
    epochs = [record["epoch"] for record in history]
    if history:
        for name, title, metric in ((LOSS, "Loss", "loss"), (ACCURACY, "Accuracy", "accuracy")):
            series = {
                split: (epochs, [record[f"{split}_{metric}"] for record in history])
                for split in ("train", "val")
                if f"{split}_{metric}" in history[0]
            }
            _curves(folder.file(name), f"{title} per epoch", metric, series, "epoch")
            written.append(name)
    if learning_rates:
        steps = list(range(1, len(learning_rates) + 1))
        _curves(
            folder.file(LEARNING_RATE), "Learning rate (head)", "learning rate", {"lr": (steps, learning_rates)}, "step"
        )
        written.append(LEARNING_RATE)
    if test and "confusion_matrix" in test:  # single-label runs: multi-label runs have none
        _confusion(folder.file(CONFUSION), test["confusion_matrix"], [row["label"] for row in test["per_class"]])
        written.append(CONFUSION)
    return written


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
