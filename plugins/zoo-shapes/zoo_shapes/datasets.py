"""The shapes dataset: circles, squares and triangles drawn from a seed, no files needed."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset


class Shapes(Dataset):
    """Synthetic 28x28 grayscale circles, squares and triangles of random size and position."""

    classes = ["circle", "square", "triangle"]
    mean = (0.15,)
    std = (0.35,)
    # What training may do to these images (zoo's `augmentation` contract): a shape mirrored is the
    # same shape; sizes and positions vary already, and a crop could cut a corner off.
    augmentation = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "hflip": 0.5, "color_jitter": 0.0}

    def __init__(self, root: Path, split: str, samples: int = 3000, image_size: int = 28, seed: int = 0) -> None:
        # root is part of the dataset contract; generated data needs no files.
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        generator = torch.Generator().manual_seed(seed * 2 + (split == "test"))
        count = samples if split == "train" else max(1, samples // 5)
        self.targets = torch.randint(0, len(self.classes), (count,), generator=generator)
        size = torch.empty(count).uniform_(image_size * 0.15, image_size * 0.35, generator=generator)
        margin = size + 1
        cx = margin + torch.rand(count, generator=generator) * (image_size - 2 * margin)
        cy = margin + torch.rand(count, generator=generator) * (image_size - 2 * margin)
        y, x = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")
        dx = x[None] - cx[:, None, None]
        dy = y[None] - cy[:, None, None]
        r = size[:, None, None]
        circle = dx**2 + dy**2 <= r**2
        square = (dx.abs() <= r * 0.85) & (dy.abs() <= r * 0.85)
        triangle = (dy <= r) & (dy >= -r) & (dx.abs() <= (dy + r) / 2)
        masks = torch.stack([circle, square, triangle], dim=1)
        chosen = masks[torch.arange(count), self.targets]
        self.images = (chosen.to(torch.uint8) * 255).unsqueeze(1)  # uint8 N x 1 x H x W: zoo's fast path

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = (self.images[index].float() / 255 - self.mean[0]) / self.std[0]
        return image, int(self.targets[index])
