"""Calibrated scores for single-label runs: temperature scaling (Guo et al. 2017) and the expected
calibration error.

One temperature T divides the logits: the predicted class never changes, but the softmax
probabilities become as confident as the model is right. T is fitted on the validation split by
minimising its negative log-likelihood; the expected calibration error (ECE: the gap between
confidence and accuracy, averaged over confidence bins, weighted by their images) says how far off
the probabilities were before and are after.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)  # a fit outside is a degenerate split (every image right, say), not a temperature


def confidence_bins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per equal-width bin of softmax(``logits``)'s top-1 confidence: images, right answers and the sum
    of their confidence (3 x bins, float64: bins of several batches or ranks add up)."""
    confidence, predicted = logits.float().softmax(1).max(1)
    which = (confidence.double() * ECE_BINS).ceil().clamp(1, ECE_BINS).long() - 1  # (0, 1/15] is bin 0
    sums = torch.stack([torch.ones_like(confidence, dtype=torch.double), (predicted == labels).double(),
                        confidence.double()])  # fmt: skip
    return torch.zeros(3, ECE_BINS, dtype=torch.double, device=logits.device).index_add_(1, which, sums)


def calibration_error(bins: torch.Tensor) -> float:
    """The expected calibration error of ``confidence_bins``: per bin |accuracy - mean confidence|,
    weighted by the bin's share of the images."""
    images, right, confidence = bins.double().cpu()
    return float(((right - confidence).abs()).sum() / images.sum().clamp(min=1))


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return calibration_error(confidence_bins(logits, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the cross-entropy of ``logits / T`` on ``labels`` (LBFGS on log T)."""
    logits, labels = logits.detach().double(), labels.detach()
    log_t = torch.zeros((), dtype=torch.double, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    low, high = TEMPERATURE_RANGE
    return min(max(float(log_t.detach().exp()), low), high)
