"""Prediction: image files through a run's own preprocessing, top-k labels with probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from . import artifacts
from .errors import ZooError
from .model import load_run


def load_image(path: Path, input_size: Sequence[int]) -> torch.Tensor:
    """``path`` as a C x H x W float tensor in [0, 1], converted and resized to ``input_size``."""
    channels, height, width = input_size
    try:
        with Image.open(path) as image:
            converted = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ZooError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    array = torch.from_numpy(np.array(converted, dtype=np.float32) / 255.0)
    return array.unsqueeze(0) if channels == 1 else array.permute(2, 0, 1)


def predict_files(run_folder: Path, paths: Sequence[Path], top_k: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Top-k predictions for each readable file, and a one-line error for each unreadable one."""
    model, label_names = load_run(run_folder)
    config = artifacts.read_config(run_folder)["pretrained_cfg"]
    mean = torch.tensor(config["mean"]).view(-1, 1, 1)
    std = torch.tensor(config["std"]).view(-1, 1, 1)
    images, readable, errors = [], [], []
    for path in paths:
        try:
            images.append((load_image(path, config["input_size"]) - mean) / std)
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
