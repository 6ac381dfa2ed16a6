"""Prediction: image files through a run's own preprocessing, top-k labels with probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .artifacts import RunFolder
from .data import build_transform, image_file
from .errors import ZooError
from .model import load_run

BATCH = 64  # images in memory at once, however many files are given


def predict_files(run_folder: Path, paths: Sequence[Path], top_k: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Top-k predictions for each readable file, and a one-line error for each unreadable one."""
    run = RunFolder.existing(run_folder)
    model = load_run(run)
    label_names = model.label_names
    transform = build_transform(run.preprocessing)
    predictions, errors = [], []
    for start in range(0, len(paths), BATCH):
        images, readable = [], []
        for path in paths[start : start + BATCH]:
            try:
                with image_file(path) as image:
                    images.append(transform(image))
                readable.append(path)
            except ZooError as exc:
                errors.append(str(exc))
        if images:
            predictions += _top(model, torch.stack(images), readable, label_names, top_k)
    return predictions, errors


@torch.no_grad()
def _top(
    model: torch.nn.Module, images: torch.Tensor, paths: list[Path], label_names: list[str], top_k: int
) -> list[dict[str, Any]]:
    probabilities = model(images).float().softmax(dim=1)
    top = probabilities.topk(min(top_k, len(label_names)), dim=1)
    return [
        {
            "file": str(path),
            "top": [{"label": label_names[i], "probability": float(p)} for p, i in zip(values, indices)],
        }
        for path, values, indices in zip(paths, top.values, top.indices)
    ]
