"""Built-in losses; each factory returns a module called as ``loss(logits, targets)``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def cross_entropy(label_smoothing: float = 0.0, weight: torch.Tensor | None = None) -> nn.Module:
    """Cross-entropy on logits, with optional label smoothing and class weights; takes soft targets
    (class probabilities, as MixUp and CutMix make) as well as class indices."""
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


class _NLLOnLogits(nn.Module):
    def __init__(self, weight: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(F.log_softmax(logits, dim=1), targets, weight=self.weight)


def nll(weight: torch.Tensor | None = None) -> nn.Module:
    """Negative log-likelihood of log-softmax(logits), as in the classic MNIST example."""
    return _NLLOnLogits(weight)


class _SoftmaxMSE(nn.Module):
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=1)
        return F.mse_loss(probs, F.one_hot(targets, probs.shape[1]).to(probs.dtype))


def mse() -> nn.Module:
    """Mean squared error between softmax probabilities and one-hot targets."""
    return _SoftmaxMSE()


class FocalLoss(nn.Module):
    def __init__(self, gamma: float, alpha: float | None) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.alpha is not None:
            loss = self.alpha * loss
        return loss.mean()


def focal(gamma: float = 2.0, alpha: float | None = None) -> nn.Module:
    """Focal loss (Lin et al. 2017): cross-entropy down-weighted on well-classified examples."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    return FocalLoss(gamma, alpha)


class _BCEWithLogits(nn.BCEWithLogitsLoss):
    """Binary cross-entropy on logits of multi-hot targets; ``weight`` (the class weights) is its ``pos_weight``."""

    multi_label = True
    soft_targets = True

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.float(), targets.float())


def bce(weight: torch.Tensor | None = None) -> nn.Module:
    """Binary cross-entropy with logits, one sigmoid per class, for multi-label data (`weight`: pos_weight)."""
    return _BCEWithLogits(pos_weight=weight)


class AsymmetricLoss(nn.Module):
    """ASL (Ridnik et al. 2021): easy negatives down-weighted by ``gamma_neg``, and negatives whose
    probability is under ``clip`` ignored; positives weighted by ``gamma_pos``."""

    multi_label = True
    soft_targets = True

    def __init__(self, gamma_neg: float, gamma_pos: float, clip: float, eps: float = 1e-8) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float()
        p = torch.sigmoid(logits.float())
        p_neg = (p - self.clip).clamp(min=0) if self.clip else p  # probability shifting of the negatives
        positive = targets * (1 - p) ** self.gamma_pos * torch.log(p.clamp(min=self.eps))
        negative = (1 - targets) * p_neg**self.gamma_neg * torch.log((1 - p_neg).clamp(min=self.eps))
        return -(positive + negative).sum(1).mean()


def asl(gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05) -> nn.Module:
    """Asymmetric loss (Ridnik et al. 2021) for multi-label data: easy negatives down-weighted and clipped."""
    if gamma_neg < 0 or gamma_pos < 0:
        raise ValueError(f"gamma_neg and gamma_pos must be >= 0, got {gamma_neg} and {gamma_pos}")
    if not 0.0 <= clip < 1.0:
        raise ValueError(f"clip must be in [0, 1), got {clip}")
    return AsymmetricLoss(gamma_neg, gamma_pos, clip)
