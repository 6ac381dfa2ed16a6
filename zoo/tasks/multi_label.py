"""Multi-label classification: a set of labels per image, one sigmoid score per class.

Targets are multi-hot rows; the loss is binary cross-entropy with logits (``bce``) or ASL
(``asl``). Metrics are ranking metrics (average precision per class, mAP over classes and over
every (image, class) pair) and, at one threshold per class, precision, recall and F1. The
thresholds are tuned on the validation split, each to maximise its class's F1 (0.5 without one).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from ..config.schema import Recipe
from ..data.splits import Splits
from ..errors import ZooError

DEFAULT_THRESHOLD = 0.5


def resolve_task(recipe: Recipe, splits: Splits, training: bool = True) -> str:
    """The recipe's task: ``task`` as written, else multi_label when the data gives label sets.
    Single-label data trained as multi_label gets one-hot rows as its label sets. ``training``:
    check the settings that only training uses, too."""
    task = recipe.task or ("multi_label" if splits.multi_label else "single_label")
    if task == "single_label" and splits.multi_label:
        raise ZooError(f"task = \"single_label\", but dataset '{recipe.data.dataset}' yields label sets (several "
                       "labels an image): set task = \"multi_label\" or remove task")  # fmt: skip
    if training and recipe.train.calibrate and (task == "multi_label" or splits.val is None):
        raise ZooError("train.calibrate fits a temperature on the validation split of a single_label run: "
                       + ("set data.val_split" if splits.val is None else "multi_label runs tune thresholds instead")
                       + ", or remove train.calibrate")  # fmt: skip
    if training and task == "single_label" and recipe.train.monitor == "val_mAP":
        raise ZooError("train.monitor = val_mAP is a multi_label run's metric; a single_label run's validation "
                       "gives val_accuracy, val_f1 and val_loss: monitor one of them")  # fmt: skip
    if task == "multi_label":
        if training and recipe.data.sampler == "balanced":
            raise ZooError("data.sampler = \"balanced\" draws images by their one class; multi-label images hold "
                           "several: remove data.sampler (loss.class_weights = \"balanced\" weighs rare labels)")  # fmt: skip
        if not splits.multi_label:
            for split in splits.splits:
                split.labels = F.one_hot(split.labels, len(splits.label_names)).float()
    return task


def positive_weights(labels: torch.Tensor) -> list[float]:
    """``loss.class_weights = "balanced"`` for multi-label data: each class's negatives over its
    positives in the training split (BCE's ``pos_weight``)."""
    positives = labels.sum(0).double()
    if not positives.all():
        raise ZooError(f"loss.class_weights = balanced: class number {int((positives == 0).nonzero()[0])} has no "
                       "training image")  # fmt: skip
    return ((len(labels) - positives) / positives).tolist()


def exact_matches(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many images have every label right at 0.5 (the training accuracy of multi-label data)."""
    return ((logits > 0) == (labels > 0.5)).all(1).sum()


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float | None:
    """The area under the precision-recall curve as a step function, over every distinct score:
    scikit-learn's ``average_precision_score``. None when ``targets`` has no positive."""
    positives = float(targets.sum())
    if positives == 0:
        return None
    order = scores.double().argsort(descending=True, stable=True)
    ranked, hits = scores.double()[order], targets.double()[order]
    true_positives = hits.cumsum(0)
    last_of_tie = torch.ones(len(ranked), dtype=torch.bool)
    last_of_tie[:-1] = ranked[1:] != ranked[:-1]  # a threshold takes every image of the same score at once
    true_positives = true_positives[last_of_tie]
    predicted = torch.arange(1, len(ranked) + 1, dtype=torch.double)[last_of_tie]
    recall = true_positives / positives
    steps = recall - torch.cat([recall.new_zeros(1), recall[:-1]])
    return float((steps * true_positives / predicted).sum())


def tune_thresholds(probabilities: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per class, the threshold that maximises its F1 on these scores: halfway between the lowest
    score taken as positive and the next one below (0.5 for a class without positives)."""
    thresholds = []
    for scores, hits in zip(probabilities.double().T, targets.double().T):
        positives = float(hits.sum())
        if positives == 0:
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        order = scores.argsort(descending=True, stable=True)
        ranked, true_positives = scores[order], hits[order].cumsum(0)
        cut = torch.ones(len(ranked), dtype=torch.bool)
        cut[:-1] = ranked[1:] != ranked[:-1]
        candidates = cut.nonzero().flatten()
        f1 = 2 * true_positives[candidates] / (candidates + 1 + positives)
        best = int(candidates[int(f1.argmax())])  # the first maximum: the highest threshold of equals
        below = float(ranked[best + 1]) if best + 1 < len(ranked) else 0.0
        thresholds.append((float(ranked[best]) + below) / 2)
    return thresholds


def metrics(
    probabilities: torch.Tensor, targets: torch.Tensor, label_names: list[str], thresholds: list[float] | None
) -> dict[str, Any]:
    """mAP (macro over the classes with positives, and micro), and at ``thresholds`` (0.5 each
    without) macro and micro F1, precision and recall, the share of images with every label right,
    and per-class rows."""
    thresholds = thresholds or [DEFAULT_THRESHOLD] * len(label_names)
    predicted = probabilities >= torch.tensor(thresholds, dtype=probabilities.dtype)
    actual = targets > 0.5
    true_positives = (predicted & actual).sum(0).double()
    predicted_count, support = predicted.sum(0).double(), actual.sum(0).double()
    precision = torch.where(predicted_count > 0, true_positives / predicted_count.clamp(min=1), 0.0)
    recall = torch.where(support > 0, true_positives / support.clamp(min=1), 0.0)
    f1 = torch.where(predicted_count + support > 0, 2 * true_positives / (predicted_count + support).clamp(min=1), 0.0)
    per_class_ap = [average_precision(scores, hits) for scores, hits in zip(probabilities.T, targets.T)]
    scored = [ap for ap in per_class_ap if ap is not None]
    all_tp, all_predicted, all_actual = float(true_positives.sum()), float(predicted.sum()), float(actual.sum())
    return {
        "accuracy": float((predicted == actual).all(1).double().mean()) if len(actual) else 0.0,
        "mAP": sum(scored) / len(scored) if scored else 0.0,
        "mAP_micro": average_precision(probabilities.flatten(), targets.flatten()) or 0.0,
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "f1_micro": 2 * all_tp / (all_predicted + all_actual) if all_predicted + all_actual else 0.0,
        "per_class": [
            {
                "label": name,
                "ap": ap,
                "threshold": threshold,
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for name, ap, threshold, p, r, f, s in zip(
                label_names, per_class_ap, thresholds, precision, recall, f1, support
            )
        ],  # fmt: skip
    }
