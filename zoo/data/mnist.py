"""MNIST as a zoo dataset, held in memory as one uint8 tensor for the runner's fast path."""

from __future__ import annotations

import math
import os
import urllib.error
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .._files import open_regular
from ..errors import ZooError
from .augment import DIGITS

# The original IDX files, as torchvision's MNIST keeps them in <root>/MNIST/raw/.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class MNIST(Dataset):
    """MNIST handwritten digits: read from <root>/MNIST/raw/, downloaded there by torchvision when missing."""

    # Computed over the 60,000 training images.
    mean = (0.1307,)
    std = (0.3081,)
    augmentation = DIGITS  # what training may do to a digit and keep its label
    hub_dataset = "ylecun/mnist"  # the same data on the Hugging Face Hub, which a model card names

    def __init__(self, root: Path, split: str, download: bool = True) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        raw = Path(root) / "MNIST" / "raw"
        images, labels = (raw / name for name in FILES[split])
        if not (images.exists() and labels.exists()):
            _download(Path(root), split, download)
        self.images = read_idx(images, dimensions=3).unsqueeze(1)  # uint8, N x 1 x 28 x 28
        self.targets = read_idx(labels, dimensions=1).long()
        if len(self.targets) and int(self.targets.max()) > 9:
            raise ZooError(f"{labels} holds the label {int(self.targets.max())}, not a digit: it is damaged; "
                           "download MNIST again")  # fmt: skip
        if len(self.images) != len(self.targets):
            raise ZooError(f"{images} holds {len(self.images):,} images but {labels} {len(self.targets):,} labels")
        self.classes = [str(digit) for digit in range(10)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255).sub_(self.mean[0]).div_(self.std[0])
        return image, int(self.targets[index])


def read_idx(path: Path, dimensions: int) -> torch.Tensor:
    """The uint8 array of an IDX file (big-endian sizes after a magic number whose last byte counts them).

    Read here rather than through torchvision, whose import (its models and ops) would cost a run
    on MNIST two seconds of start-up; a damaged file is one line, not an assertion.
    """
    descriptor = open_regular(path, os.O_RDONLY)
    if descriptor is None:
        raise ZooError(f"{path} does not exist: set ZOO_DATA_DIR (or data.root) to a folder that holds MNIST/raw/")
    with os.fdopen(descriptor, "rb") as file:
        size, header = os.fstat(descriptor).st_size, 4 * (dimensions + 1)
        head = file.read(header)
        if len(head) < header or head[:4] != bytes([0, 0, 0x08, dimensions]):
            raise ZooError(f"{path} is not an IDX file of {dimensions}-dimensional uint8 data: download MNIST again")
        shape = [int.from_bytes(head[4 * i : 4 * i + 4], "big") for i in range(1, dimensions + 1)]
        if size != header + math.prod(shape):  # checked before reading: a huge file is never read
            raise ZooError(f"{path} is {size:,} bytes, not the {header + math.prod(shape):,} its header says: "
                           "it is damaged or truncated; download MNIST again")  # fmt: skip
        body = bytearray(size - header)  # writable: torch's tensors may be changed in place
        if file.readinto(body) != len(body):
            raise ZooError(f"{path} changed while it was read; read it again")
    return (torch.frombuffer(body, dtype=torch.uint8) if body else torch.empty(0, dtype=torch.uint8)).view(*shape)


def _download(root: Path, split: str, download: bool) -> None:
    """torchvision's download of MNIST into ``root``/MNIST/raw/ (its mirrors, checksums and unpacking)."""
    import torchvision  # only to download: its import is slow

    try:
        torchvision.datasets.MNIST(str(root), train=split == "train", download=download)
    except (RuntimeError, OSError, urllib.error.URLError) as exc:
        reason = " ".join(str(exc).split())  # torchvision's message spans lines
        raise ZooError(
            f"MNIST not found in {root / 'MNIST' / 'raw'} and not downloadable ({reason}); "
            "set ZOO_DATA_DIR (or data.root in the recipe) to a folder that holds MNIST/raw/"
        ) from exc


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
