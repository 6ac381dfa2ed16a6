"""The classic PyTorch MNIST network as a backbone (the 128 -> classes layer is zoo's head)."""

from __future__ import annotations

import torch
from torch import nn

from ..data.augment import DIGITS


class MnistCNN(nn.Module):
    """Classic PyTorch MNIST CNN (conv 32-64, max-pool, fc 128) as a backbone with 128 features."""

    # A network for digits, wherever they come from (an image folder of digits says nothing about
    # them): what training may do to a digit and keep its label.
    augmentation = DIGITS

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
        sizes = {"in_chans": in_chans, "image_size": image_size, "conv1": conv1, "conv2": conv2, "hidden": hidden}
        for name, value in {**sizes, "kernel_size": kernel_size}.items():
            if not 1 <= value <= 1 << 16:
                raise ValueError(f"{name} must be between 1 and 65536, got {value}")
        for name, value in {"dropout1": dropout1, "dropout2": dropout2}.items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        self.conv1 = nn.Conv2d(in_chans, conv1, kernel_size)
        self.conv2 = nn.Conv2d(conv1, conv2, kernel_size)
        pooled = (image_size - 2 * (kernel_size - 1)) // 2
        if pooled < 1:
            raise ValueError(f"image_size {image_size} is too small for kernel_size {kernel_size}")
        if conv2 * pooled * pooled * hidden > 1 << 30:
            raise ValueError(f"fc1 would hold {conv2 * pooled * pooled * hidden:,} weights; lower image_size or hidden")
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
