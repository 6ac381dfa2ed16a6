"""Decoded image caches (``data.cache``): an image folder decoded once, read as uint8 batches.

Decoding PNG or JPEG files again every epoch costs more than a small model's forward pass. With
a cache each image is decoded once, resized as timm's evaluation transform resizes it (shorter
side to ``input / crop_pct``) and cut to a square that holds the evaluation crop, into one
N x C x S x S uint8 file under ``$ZOO_CACHE_DIR/images/``. Batches are then read from that file
(``"disk"``: one read per image, so memory stays bounded by the batch, not the dataset) or from
a copy in memory (``"memory"``), cropped and augmented on the device (``zoo/augment.py``).

A cache is named by the sha256 of what decides its bytes: every file's path, size and
modification time, and the decode settings. It is built under a lock (a second run or rank
waits, then reads it), into a temporary file renamed into place, and trusted only once its
description is written beside it, so a killed build leaves nothing that is read later.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import artifacts, locking
from .errors import ZooError, from_worker
from .preprocessing import Preprocessing
from .recipe import cache_dir

# data.cache defaults to "disk" up to this many decoded bytes: 8 GiB holds ImageNet-sized folders
# of up to ~60,000 images at 224 px; beyond it a first epoch spent decoding is the smaller cost.
DISK_BOUND = 8 << 30
VERSION = 1  # of the decode below: a change to it must change every cache's name


@dataclass(frozen=True)
class Layout:
    """How images are decoded into a cache: S x S squares of ``channels``, resized as timm evaluates."""

    size: int  # S: the evaluation resize, floor(input / crop_pct), as timm computes it
    crop: int  # the evaluation crop inside it (the model's input size)
    channels: int
    interpolation: str
    crop_mode: str

    @classmethod
    def of(cls, preprocessing: Preprocessing) -> Layout | None:
        """The layout for ``preprocessing``, or None where a cache cannot reproduce its evaluation
        transform (a non-square input, or timm's ``border`` crop mode)."""
        _, height, width = preprocessing.input_size
        if height != width or preprocessing.crop_mode not in ("center", "squash"):
            return None
        size = math.floor(height / preprocessing.crop_pct)
        return cls(size, height, preprocessing.channels, preprocessing.interpolation, preprocessing.crop_mode)

    @property
    def image_bytes(self) -> int:
        return self.channels * self.size * self.size


def image_files(dataset: Dataset) -> list[str] | None:
    """The image file of each item of ``dataset`` (torchvision's ``samples`` of (path, label)), or None."""
    samples = getattr(dataset, "samples", None)
    if not isinstance(samples, list) or not all(isinstance(s, tuple) and len(s) == 2 for s in samples):
        return None
    return [str(path) for path, _ in samples]


def choose(setting: str | None, dataset: Dataset, layout: Layout | None, pil_only: bool) -> str:
    """``data.cache`` for ``dataset``: as set (checked), or by default "disk" when a cache can serve it."""
    files = image_files(dataset)
    why_not = (
        "the dataset does not list its image files (torchvision's `samples`, as image_folder does)"
        if files is None
        else "the input is not square or the crop mode is border"
        if layout is None
        else "auto-augment needs PIL images"
        if pil_only
        else None
    )
    if setting in (None, "none"):
        fits = files is not None and layout is not None and len(files) * layout.image_bytes <= DISK_BOUND
        return "disk" if setting is None and why_not is None and fits else "none"
    if why_not is not None:
        raise ZooError(f"data.cache = {setting}: {why_not}; set data.cache = none")
    return setting


class DecodedImages:
    """A cache's images: ``images[indices]`` is a uint8 tensor of len(indices) x C x S x S."""

    def __init__(self, path: Path, count: int, layout: Layout, in_memory: bool, built: float | None = None) -> None:
        self.path, self.count, self.layout = path, count, layout
        self.built = built  # seconds spent building it in this process; None when it was there already
        self.shape = (layout.channels, layout.size, layout.size)
        self.memory = (
            torch.from_numpy(np.fromfile(path, dtype=np.uint8)).view(count, *self.shape) if in_memory else None
        )

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        if self.memory is not None:
            return self.memory[indices]
        batch = torch.empty((len(indices), *self.shape), dtype=torch.uint8)
        size = self.layout.image_bytes
        view = batch.numpy().reshape(len(indices), size)
        with open(self.path, "rb", buffering=0) as file:
            for row, index in enumerate(indices.tolist()):
                file.seek(index * size)
                if file.readinto(memoryview(view[row])) != size:
                    raise ZooError(f"{self.path} is shorter than its description says; remove it to rebuild")
        return batch


def decoded(dataset: Dataset, layout: Layout, in_memory: bool, workers: int, progress: bool) -> DecodedImages:
    """The cache of ``dataset`` decoded with ``layout``: read if it exists, else built first."""
    files = image_files(dataset)
    assert files is not None, "choose() allows a cache only for datasets that list their files"
    name = _name(files, layout)
    path = cache_dir() / "images" / f"{name}.u8"
    description = path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    built = None
    with locking.locked(path):
        if not _complete(path, description, len(files), layout):
            started = time.perf_counter()
            for abandoned in path.parent.glob(f".{path.name}.*.tmp"):  # a build that was killed
                abandoned.unlink(missing_ok=True)
            _build(files, layout, path, workers, progress)
            artifacts.write_json(description, {"version": VERSION, "count": len(files), **asdict(layout)})
            built = time.perf_counter() - started
    return DecodedImages(path, len(files), layout, in_memory, built)


def _name(files: list[str], layout: Layout) -> str:
    content = hashlib.sha256(json.dumps({"version": VERSION, **asdict(layout)}).encode())
    for file in files:
        try:
            status = os.stat(file)
        except OSError as exc:
            raise ZooError(f"{file} is not a readable image ({exc.strerror})") from None
        content.update(json.dumps([os.path.abspath(file), status.st_size, status.st_mtime_ns]).encode())
    return content.hexdigest()[:32]


def _complete(path: Path, description: Path, count: int, layout: Layout) -> bool:
    try:
        described = json.loads(artifacts.read_file(description) or b"null")  # never a FIFO: it would block
        return described == {"version": VERSION, "count": count, **asdict(layout)} and (
            path.stat().st_size == count * layout.image_bytes
        )
    except (OSError, ValueError, ZooError):  # damaged, or not a file: rebuilt, and replaced by the rename
        return False


def _build(files: list[str], layout: Layout, path: Path, workers: int, progress: bool) -> None:
    """Decode ``files`` into ``path`` through a temporary file, in parallel, in order."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    loader = DataLoader(_Decoding(files, layout), batch_size=64, num_workers=workers)
    bar = tqdm(total=len(files), desc=f"decoding {len(files):,} images once", unit="img", disable=not progress)
    try:
        with open(staging, "xb") as file:  # a new file (O_EXCL): never through a link left there
            try:
                for batch in loader:
                    file.write(batch.numpy().tobytes())
                    bar.update(len(batch))
            except ZooError as exc:
                raise from_worker(exc) from None
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)
    finally:
        bar.close()
        staging.unlink(missing_ok=True)


class _Decoding(Dataset):
    """Each file decoded as timm's evaluation transform would, cut to the cache's S x S square."""

    def __init__(self, files: list[str], layout: Layout) -> None:
        self.files, self.layout = files, layout

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        from .data import image_file

        layout = self.layout
        with image_file(Path(self.files[index])) as image:
            image = image.convert("L" if layout.channels == 1 else "RGB")
        interpolation = InterpolationMode(layout.interpolation)
        if layout.crop_mode == "squash":
            image = F.resize(image, [layout.size, layout.size], interpolation)
        else:
            image = F.resize(image, layout.size, interpolation)  # the shorter side, as timm's eval Resize
        top, left = (_offset(length, layout) for length in (image.height, image.width))
        square = F.crop(image, top, left, layout.size, layout.size)
        pixels = np.array(square, dtype=np.uint8).reshape(square.height, square.width, -1)
        return torch.from_numpy(pixels).permute(2, 0, 1)


def _offset(length: int, layout: Layout) -> int:
    """Where the S-long window starts in a side of ``length``, so that the evaluation crop cut from
    its centre later falls exactly where timm's CenterCrop puts it in the whole image."""
    inner = int(round((layout.size - layout.crop) / 2.0))
    return min(max(0, int(round((length - layout.crop) / 2.0)) - inner), length - layout.size)


def centre(images: torch.Tensor, crop: int) -> torch.Tensor:
    """The evaluation crop of cached squares (N x C x S x S -> N x C x crop x crop)."""
    start = int(round((images.shape[-1] - crop) / 2.0))
    return images[:, :, start : start + crop, start : start + crop]
