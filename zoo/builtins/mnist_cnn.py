"""The classic PyTorch MNIST network as a backbone (the 128 -> classes layer is zoo's head)."""

from __future__ import annotations

import torch
from torch import nn


class MnistCNN(nn.Module):
    """Classic PyTorch MNIST CNN (conv 32-64, max-pool, fc 128) as a backbone with 128 features."""

    def __init__(
        self,
        in_chans: int = 1,
        image_size: int = 28,
        conv1: int = 32,
        conv2: int = 64,
        kernel_size: int = 3,
        hidden: int = 128,
        dropout1: float = 0.25,
        dropout2: float = 0.5,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, conv1, kernel_size)
        self.conv2 = nn.Conv2d(conv1, conv2, kernel_size)
        pooled = (image_size - 2 * (kernel_size - 1)) // 2
        if pooled < 1:
            raise ValueError(f"image_size {image_size} is too small for kernel_size {kernel_size}")
        # Dropout, not Dropout2d: widespread copies apply Dropout2d to the flattened features.
        self.dropout1 = nn.Dropout(dropout1)
        self.fc1 = nn.Linear(conv2 * pooled * pooled, hidden)
        self.dropout2 = nn.Dropout(dropout2)
        self.num_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.max_pool2d(x, 2)
        x = self.dropout1(torch.flatten(x, 1))
        return self.dropout2(torch.relu(self.fc1(x)))
