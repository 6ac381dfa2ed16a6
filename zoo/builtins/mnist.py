"""MNIST as a zoo dataset, held in memory as one uint8 tensor for the runner's fast path."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch
import torchvision
from torch.utils.data import Dataset

from ..errors import ZooError


class MNIST(Dataset):
    """MNIST handwritten digits (torchvision's): downloads when online, else reads <root>/MNIST/raw/."""

    # Computed over the 60,000 training images.
    mean = (0.1307,)
    std = (0.3081,)

    def __init__(self, root: Path, split: str, download: bool = True) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        try:
            source = torchvision.datasets.MNIST(str(root), train=split == "train", download=download)
        except (RuntimeError, OSError, urllib.error.URLError) as exc:
            reason = " ".join(str(exc).split())  # torchvision's message spans lines
            raise ZooError(
                f"MNIST not found in {Path(root) / 'MNIST' / 'raw'} and not downloadable ({reason}); "
                "set ZOO_DATA_DIR (or data.root in the recipe) to a folder that holds MNIST/raw/"
            ) from exc
        self.images = source.data.unsqueeze(1)  # uint8, N x 1 x 28 x 28
        self.targets = source.targets
        self.classes = [str(digit) for digit in range(10)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255).sub_(self.mean[0]).div_(self.std[0])
        return image, int(self.targets[index])
