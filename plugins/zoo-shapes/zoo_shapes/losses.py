"""The Poly-1 loss (Leng et al., "PolyLoss", ICLR 2022)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Poly1Loss(nn.Module):
    def __init__(self, epsilon: float) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        cross_entropy = F.nll_loss(log_p, targets, reduction="none")
        p_true = log_p.gather(1, targets[:, None]).squeeze(1).exp()
        return (cross_entropy + self.epsilon * (1 - p_true)).mean()


def poly1(epsilon: float = 1.0) -> nn.Module:
    """Poly-1 loss: cross-entropy + epsilon * (1 - probability of the true class)."""
    return Poly1Loss(epsilon)
