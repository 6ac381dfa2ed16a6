"""MNIST as a zoo dataset, held in memory as one uint8 tensor for the runner's fast path."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch
import torchvision
from torch.utils.data import Dataset

from ..errors import ZooError
from .augment import DIGITS


class MNIST(Dataset):
    """MNIST handwritten digits (torchvision's): downloads when online, else reads <root>/MNIST/raw/."""

    # Computed over the 60,000 training images.
    mean = (0.1307,)
    std = (0.3081,)
    augmentation = DIGITS  # what training may do to a digit and keep its label
    hub_dataset = "ylecun/mnist"  # the same data on the Hugging Face Hub, which a model card names

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


def write_image_folder(root: Path, folder: Path, per_split: dict[str, int]) -> Path:
    """MNIST as PNG files in torchvision's ImageFolder layout: ``folder/<split>/<digit>/<index>.png``.

    ``per_split`` gives how many images of each digit to write per split (``{"train": 60}``);
    an image folder to try ``image_folder`` and timm recipes on without other data.
    """
    from PIL import Image

    for split, count in per_split.items():
        dataset = MNIST(root, split, download=False)
        for digit in range(10):
            (folder / split / str(digit)).mkdir(parents=True, exist_ok=True)
            for index in (dataset.targets == digit).nonzero().flatten()[:count].tolist():
                Image.fromarray(dataset.images[index, 0].numpy()).save(folder / split / str(digit) / f"{index}.png")
    return folder
