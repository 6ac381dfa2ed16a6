"""Decoded image caches (``data.cache``): an image folder decoded once, read as uint8 batches.

Decoding PNG or JPEG files again every epoch costs more than a small model's forward pass. With
a cache each image is decoded once, resized as timm's evaluation transform resizes it (shorter
side to ``input / crop_pct``) and cut to a square that holds the evaluation crop, into one
N x C x S x S uint8 file under ``$ZOO_CACHE_DIR/images/``. Batches are then read from that file
(``"disk"``: one read per image, so memory stays bounded by the batch, not the dataset) or from
a copy in memory (``"memory"``), cropped and augmented on the device (``zoo/augment.py``).

A cache is named by the sha256 of what decides its bytes: the decode settings and every file,
by its path under the dataset's folder (a moved folder keeps its cache) and by what ``os.stat``
says of it: size, modification time, inode and change time (``cp -p``, ``rsync -t`` and tar set
a modification time back, but no tool sets the change time, so a file rewritten in place or
replaced is seen), or with ``data.cache_verify = "content"`` by the sha256 of its bytes. One
process per node stats (or reads) the files and sends the name to the node's other ranks. A
cache is built under a lock (a second run or rank waits, then reads it), into a temporary file
renamed into place, and trusted only once its description is written beside it, so a killed
build leaves nothing that is read later.

A dataset of images that are not files (the ``hf`` plugin's cells) is decoded through its own
``__getitem__`` and named by its ``fingerprint`` (a Hub commit, split and ``datasets`` fingerprint).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import queue
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .. import _files
from .. import _locking as locking
from .._output import Progress
from ..config.recipe import cache_dir
from ..errors import ZooError, from_worker
from ..parallel import distributed
from .contract import facts
from .images import converted, image_file
from .preprocessing import Preprocessing

# data.cache defaults to "disk" up to this many decoded bytes: 8 GiB holds ImageNet-sized folders
# of up to ~60,000 images at 224 px; beyond it a first epoch spent decoding is the smaller cost.
DISK_BOUND = 8 << 30
# Of the decode below: a change to it must change every cache's name (2: 16-bit grayscale scaled, not clipped).
VERSION = 2


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


def choose(setting: str | None, dataset: Dataset, layout: Layout | None, pil_only: bool) -> str:
    """``data.cache`` for ``dataset``: as set (checked), or by default "disk" when a cache can serve it."""
    found = facts(dataset)
    count = len(dataset) if found.fingerprint is not None else len(found.files) if found.files is not None else None  # type: ignore[arg-type]
    why_not = (
        "the dataset does not list its image files (torchvision's `samples`, as image_folder does) and has no "
        "`fingerprint` (as hf has)"
        if count is None
        else "the input is not square or the crop mode is border"
        if layout is None
        else "auto-augment needs PIL images"
        if pil_only
        else None
    )
    if setting in (None, "none"):
        fits = count is not None and layout is not None and count * layout.image_bytes <= DISK_BOUND
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
        return self.read(indices)

    def read(self, indices: torch.Tensor, pin: bool = False) -> torch.Tensor:
        """The images at ``indices``; ``pin``: read into page-locked memory (for copies to a GPU that overlap)."""
        if self.memory is not None:
            return self.memory[indices]
        batch = torch.empty((len(indices), *self.shape), dtype=torch.uint8, pin_memory=pin)
        size = self.layout.image_bytes
        view = batch.numpy().reshape(len(indices), size)
        with open(self.path, "rb", buffering=0) as file:
            for row, index in enumerate(indices.tolist()):
                file.seek(index * size)
                if file.readinto(memoryview(view[row])) != size:
                    raise ZooError(f"{self.path} is shorter than its description says; remove it to rebuild")
        return batch

    def read_ahead(self, batches: list[torch.Tensor], pin: bool) -> Iterator[torch.Tensor]:
        """The images of each of ``batches`` (index tensors) in order, read by a background thread a
        few batches ahead: the disk reads of the next batches overlap this one's training step."""
        return ahead(self.read(indices, pin) for indices in batches)


T = TypeVar("T")
_END = object()


def ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items``, produced by a background thread up to ``depth`` ahead of the consumer.

    An error there is raised here, when its turn comes. The thread starts with the first item asked
    for and ends with this generator, even when it is dropped before the end (the thread sees the
    stop once its current item is done; items it holds are dropped).
    """
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                ready.put((item, None))
                if stop.is_set():
                    return
            ready.put((_END, None))
        except Exception as exc:  # raised again in the consumer's thread, when its turn comes
            ready.put((None, exc))

    thread = threading.Thread(target=produce, name="zoo-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # make room for the item it may be putting, until it sees the stop
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.01)


def decoded(
    dataset: Dataset, layout: Layout, in_memory: bool, workers: int, progress: bool, verify: str = "stat"
) -> DecodedImages:
    """The cache of ``dataset`` decoded with ``layout``: read if it exists, else built first.

    ``verify``: how its files are known unchanged, "stat" or "content" (``data.cache_verify``).
    """
    found = facts(dataset)
    source: list[str] | Dataset
    if found.fingerprint is not None:  # images that are not files: the dataset decodes them, its fingerprint names them
        source = dataset
        key = json.dumps({"version": VERSION, **asdict(layout), "fingerprint": found.fingerprint})
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
    else:
        files = found.files
        assert files is not None, (
            "choose() allows a cache only for datasets that list their files or have a fingerprint"
        )
        source, name = files, distributed.from_node_main(lambda: _name(files, layout, verify))
    count = len(source)  # type: ignore[arg-type]
    path = cache_dir() / "images" / f"{name}.u8"
    description = path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    built = None
    with locking.locked(path):
        if not _complete(path, description, count, layout):
            started = time.perf_counter()
            for abandoned in path.parent.glob(f".{path.name}.*.tmp"):  # a build that was killed
                abandoned.unlink(missing_ok=True)
            _build(source, layout, path, workers, progress)
            _files.write_json(description, {"version": VERSION, "count": count, **asdict(layout)})
            built = time.perf_counter() - started
    return DecodedImages(path, count, layout, in_memory, built)


def _name(files: list[str], layout: Layout, verify: str) -> str:
    """The cache's name: the sha256 of the decode settings and of each file (see the module's docstring)."""
    content = hashlib.sha256(json.dumps({"version": VERSION, **asdict(layout)}).encode())
    paths = [os.path.abspath(file) for file in files]
    root = os.path.commonpath([os.path.dirname(path) for path in paths])
    for path in paths:
        try:
            status = os.stat(path)
            if not stat.S_ISREG(status.st_mode):  # a FIFO would block the read below forever
                raise ZooError(f"{path} is not a readable image (not a regular file); only image files are read")
            if verify == "content":
                with open(path, "rb") as file:
                    identity = [status.st_size, hashlib.file_digest(file, "sha256").hexdigest()]
            else:
                identity = [status.st_size, status.st_mtime_ns, status.st_ino, status.st_ctime_ns]
        except OSError as exc:
            raise ZooError(f"{path} is not a readable image ({exc.strerror})") from None
        content.update(json.dumps([os.path.relpath(path, root), *identity]).encode())
    return content.hexdigest()[:32]


def _complete(path: Path, description: Path, count: int, layout: Layout) -> bool:
    try:
        described = json.loads(_files.read_file(description) or b"null")  # never a FIFO: it would block
        return described == {"version": VERSION, "count": count, **asdict(layout)} and (
            path.stat().st_size == count * layout.image_bytes
        )
    except (OSError, ValueError, ZooError):  # damaged, or not a file: rebuilt, and replaced by the rename
        return False


def _build(source: list[str] | Dataset, layout: Layout, path: Path, workers: int, progress: bool) -> None:
    """Decode ``source`` (image files, or a dataset's PIL images) into ``path`` through a staged file, in
    parallel, in order."""
    count = len(source)  # type: ignore[arg-type]
    loader = DataLoader(_Decoding(source, layout), batch_size=64, num_workers=workers)
    bar = Progress(count, f"decoding {count:,} images once", enabled=progress)
    try:
        with _files.staged_file(path) as file:
            try:
                for batch in loader:
                    file.write(batch.numpy().tobytes())
                    bar.update(len(batch))
            except ZooError as exc:
                raise from_worker(exc) from None
    finally:
        bar.close()


class _Decoding(Dataset):
    """Each image (a file, or a dataset's sample) decoded as timm's evaluation transform would, cut to
    the cache's S x S square."""

    def __init__(self, source: list[str] | Dataset, layout: Layout) -> None:
        self.source, self.layout = source, layout

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def _image(self, index: int) -> Image.Image:
        if not isinstance(self.source, list):
            return self.source[index][0]  # its transform unset: a PIL image
        with image_file(Path(self.source[index])) as image:
            return image

    def __getitem__(self, index: int) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        layout = self.layout
        image = converted(self._image(index), "L" if layout.channels == 1 else "RGB")
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
