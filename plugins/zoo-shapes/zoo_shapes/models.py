"""The tiny_mlp backbone: flatten, then a few fully connected layers."""

from __future__ import annotations

from torch import nn


class TinyMLP(nn.Sequential):
    def __init__(self, in_features: int, hidden: int, depth: int) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        super().__init__(*layers)
        # The zoo model contract: forward gives (B, num_features), and zoo adds the head.
        self.num_features = hidden


def tiny_mlp(image_size: int = 28, in_chans: int = 1, hidden: int = 64, depth: int = 2) -> nn.Module:
    """A small fully connected backbone: flatten, then `depth` ReLU layers of width `hidden`."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    return TinyMLP(in_chans * image_size * image_size, hidden, depth)
