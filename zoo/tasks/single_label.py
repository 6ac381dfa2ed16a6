"""Classification metrics from a confusion matrix: accuracy and macro precision, recall and F1."""

from __future__ import annotations

from typing import Any

import torch


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``matrix[true, predicted]`` counts."""
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def scores(matrix: torch.Tensor, label_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1 (a class with no predictions scores 0), per-class rows."""
    matrix = matrix.double()
    correct = matrix.diag()
    support = matrix.sum(1)
    predicted = matrix.sum(0)
    precision = torch.where(predicted > 0, correct / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, correct / support.clamp(min=1), 0.0)
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), 0.0)
    total = matrix.sum()
    return {
        "accuracy": float(correct.sum() / total) if total > 0 else 0.0,
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "per_class": [
            {"label": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
        ],
        "confusion_matrix": matrix.long().tolist(),
    }
