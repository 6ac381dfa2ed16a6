"""Prediction: image files through a run's own preprocessing, top-k labels with probabilities.

A multi-label run scores each label with a sigmoid, and its predicted ``labels`` are those whose
score reaches the label's threshold (tuned on validation, in config.json and in every export).

Two backends: ``torch`` loads the run's model.safetensors; ``onnxruntime`` runs the run's
exported model.onnx (`zoo export`) with nothing but what that file holds: its graph, its label
names and its preprocessing. Beside the run's weights, it must be the export of those weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from .._files import read_file
from ..data.images import image_file
from ..data.preprocessing import Preprocessing
from ..data.transforms import build_transform, check_resizable
from ..errors import ZooError
from ..runs.folder import RunFolder

BATCH = 64  # images in memory at once, however many files are given
Backend = Literal["torch", "onnxruntime"]
Classify = Callable[[torch.Tensor], torch.Tensor]  # a batch of images to logits


def predict_files(
    run_folder: Path, paths: Sequence[Path], top_k: int, backend: Backend = "torch"
) -> tuple[list[dict[str, Any]], list[str]]:
    """Top-k predictions for each readable file (and a multi-label run's labels over their
    thresholds), and a one-line error for each unreadable one."""
    classify, label_names, preprocessing, thresholds, temperature = classifier(RunFolder.existing(run_folder), backend)
    transform = build_transform(preprocessing)
    predictions, errors = [], []
    for start in range(0, len(paths), BATCH):
        images, readable = [], []
        for path in paths[start : start + BATCH]:
            try:
                with image_file(path, decode=False) as image:
                    check_resizable(image.size, preprocessing, str(path))  # from the header, before decoding
                    image.load()
                    images.append(transform(image))
                readable.append(path)
            except ZooError as exc:
                errors.append(str(exc))
        if images:
            with torch.no_grad():
                logits = classify(torch.stack(images))
            predictions += ranked(logits, readable, label_names, top_k, thresholds, temperature)
    return predictions, errors


# The model, its label names, preprocessing, thresholds (multi-label) and temperature (1: not calibrated).
Model = tuple[Classify, list[str], Preprocessing, list[float] | None, float]


def classifier(run: RunFolder, backend: Backend) -> Model:
    """The run's model as a function of a batch of images (to logits), and what reads its logits."""
    return (_onnxruntime if backend == "onnxruntime" else _torch)(run)


def _torch(run: RunFolder) -> Model:
    from ..models.build import load_run

    model = load_run(run)
    return model, model.label_names, run.preprocessing, run.thresholds, run.temperature


def _onnxruntime(run: RunFolder) -> Model:
    from ..runs.exports import FILES, check_made_from
    from .export import onnx_metadata, onnx_runner, onnx_session

    path = run.file(FILES["onnx"])
    data = read_file(path, limit=None)  # a folder or a FIFO there is said to be one
    if data is None:
        raise ZooError(f"{run} has no {path.name}: `zoo export {run} --format onnx` first")
    session = onnx_session(path, str(path))  # from the file: a graph's external data lies beside it
    label_names, preprocessing, thresholds, temperature = onnx_metadata(session, path)
    weights = read_file(run.file(RunFolder.WEIGHTS), limit=None)
    if weights is not None:  # an export alone in a folder is served as what it holds; beside weights, as theirs
        check_made_from(path, data, hashlib.sha256(weights).hexdigest())
    classify = _labelled(onnx_runner(session, str(path)), path, len(label_names))
    return classify, label_names, preprocessing, thresholds, temperature


def _labelled(classify: Classify, path: Path, labels: int) -> Classify:
    """``classify``, checked to give one logit per label for each image (a graph may leave its width open)."""

    def run(images: torch.Tensor) -> torch.Tensor:
        logits = classify(images)
        if logits.shape != (len(images), labels):
            raise ZooError(
                f"{path}: the model gives outputs of shape {list(logits.shape)} for {len(images)} images, "
                f"but its metadata names {labels} labels"
            )
        return logits

    return run


def ranked(
    logits: torch.Tensor,
    files: Sequence[str | Path],
    label_names: list[str],
    top_k: int,
    thresholds: list[float] | None = None,
    temperature: float = 1.0,
) -> list[dict[str, Any]]:
    """One prediction per image, as `zoo predict --json` (and `zoo serve`) give it: its file, the top-k
    labels and, for a multi-label run, the labels over their thresholds."""
    logits = logits.float() / temperature
    probabilities = logits.sigmoid() if thresholds is not None else logits.softmax(dim=1)
    top = probabilities.topk(min(top_k, len(label_names)), dim=1)
    predictions = [
        {
            "file": str(file),
            "top": [{"label": label_names[i], "probability": float(p)} for p, i in zip(values, indices)],
        }
        for file, values, indices in zip(files, top.values, top.indices)
    ]
    if thresholds is not None:
        over = probabilities >= torch.tensor(thresholds)
        for prediction, row in zip(predictions, over):
            prediction["labels"] = [label_names[i] for i in row.nonzero().flatten().tolist()]
    return predictions
