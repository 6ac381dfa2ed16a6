"""A split item by item: its logits (to fit a temperature) and its misclassified items, as the CSV
that `zoo eval` writes (errors.csv)."""

from __future__ import annotations

import csv
import io

import torch
from torch import nn

from ..data.batches import Batches
from ..data.contract import facts
from ..data.splits import Split
from ..parallel import distributed
from .prepared import RunSetup

COLUMNS = ("item", "true", "predicted", "confidence")


@torch.no_grad()
def split_logits(
    model: nn.Module, batches: Batches, classes: int, dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float logits and labels of a whole split, every rank's share, on the CPU (to fit a temperature)."""
    model.eval()
    logits, labels = [torch.empty(0, classes)], [batches.split.labels[:0].cpu()]
    for inputs, targets in batches.epoch():
        with torch.autocast(batches.device.type, dtype=dtype, enabled=dtype is not None):
            logits.append(model(inputs).float().cpu())
        labels.append(targets.cpu())
    shares = distributed.all_gathered((torch.cat(logits), torch.cat(labels)))
    return torch.cat([share[0] for share in shares]), torch.cat([share[1] for share in shares])


def errors_csv(setup: RunSetup, split: Split, thresholds: list[float] | None, temperature: float) -> tuple[str, int]:
    """The CSV of ``split``'s misclassified items (its file, else its index in the dataset; the true and
    predicted labels, space-separated for label sets; the confidence in the prediction), and their count.

    Single-label: the softmax probability of the predicted class. Multi-label (``thresholds``): each
    item whose predicted set differs from its labels, with how sure its worst mistake was (the highest
    score of a wrong label, or one minus the lowest score of a missed one).
    """
    names = setup.splits.label_names
    logits, labels = split_logits(setup.model, setup.batches(split), len(names), setup.dtype)
    files = facts(split.dataset).files
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    if thresholds is not None:
        scores = logits.sigmoid()
        predicted, actual = scores >= torch.tensor(thresholds), labels > 0.5
        wrong_scores = torch.where(predicted & ~actual, scores, 0.0).amax(1)
        missed_scores = torch.where(~predicted & actual, 1 - scores, 0.0).amax(1)
        for row in (predicted != actual).any(1).nonzero().flatten().tolist():
            item = files[int(split.indices[row])] if files else int(split.indices[row])
            true = " ".join(names[i] for i in actual[row].nonzero().flatten().tolist())
            guess = " ".join(names[i] for i in predicted[row].nonzero().flatten().tolist())
            writer.writerow((item, true, guess, f"{float(torch.maximum(wrong_scores[row], missed_scores[row])):.6f}"))
            count += 1
        return text.getvalue(), count
    confidence, predicted = (logits / temperature).softmax(1).max(1)
    for row in (predicted != labels).nonzero().flatten().tolist():
        item = files[int(split.indices[row])] if files else int(split.indices[row])
        writer.writerow((item, names[int(labels[row])], names[int(predicted[row])], f"{float(confidence[row]):.6f}"))
        count += 1
    return text.getvalue(), count
