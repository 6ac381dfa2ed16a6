"""Prediction: image files through a run's own preprocessing, top-k labels with probabilities."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from .artifacts import RunFolder
from .data import build_transform
from .errors import ZooError
from .model import load_run


def load_image(path: Path, transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """``path`` through the run's evaluation transform."""
    try:
        with Image.open(path) as image:
            return transform(image)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ZooError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def predict_files(run_folder: Path, paths: Sequence[Path], top_k: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Top-k predictions for each readable file, and a one-line error for each unreadable one."""
    run = RunFolder.existing(run_folder)
    model = load_run(run)
    label_names = model.label_names
    transform = build_transform(run.preprocessing)
    images, readable, errors = [], [], []
    for path in paths:
        try:
            images.append(load_image(path, transform))
            readable.append(path)
        except ZooError as exc:
            errors.append(str(exc))
    predictions = []
    if images:
        with torch.no_grad():
            probabilities = model(torch.stack(images)).float().softmax(dim=1)
        top = probabilities.topk(min(top_k, len(label_names)), dim=1)
        for path, values, indices in zip(readable, top.values, top.indices):
            ranked = [{"label": label_names[i], "probability": float(p)} for p, i in zip(values, indices)]
            predictions.append({"file": str(path), "top": ranked})
    return predictions, errors
