"""Images in class folders, torchvision's ImageFolder layout, as a zoo dataset."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from ..errors import ZooError
from .images import image_file


class ImageFolder(Dataset):
    """Images in class folders (root/<class>/*.png|jpg, or root/train/ and root/test/ each so).

    With ``train/`` and ``test/`` under ``root`` those are the splits; otherwise the images
    under ``root`` are split, per class and with ``seed``, ``test_split`` of them for testing.
    Every file must be an image: anything else is named in an error, not skipped.
    """

    def __init__(self, root: Path, split: str, test_split: float = 0.2, seed: int = 0) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if not 0.0 < test_split < 1.0:
            raise ValueError(f"test_split must be between 0 and 1, got {test_split}")
        root = Path(root)
        if (root / "train").is_dir():
            self.classes = _class_names(root / "train")
            samples = _samples(root / split, self.classes)
        else:
            self.classes = _class_names(root)
            samples = _split(_samples(root, self.classes), split, test_split, seed)
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.transform: Any = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        with image_file(Path(path)) as image:
            pass
        return (self.transform(image) if self.transform is not None else image), label


def _class_names(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise ZooError(f"data.root: image folder not found: {folder}")
    try:
        names, _ = find_classes(str(folder))
    except FileNotFoundError:
        raise ZooError(
            f"data.root: {folder} has no class folders; put images in {folder}/<class>/ "
            f"(or in {folder}/train/<class>/ and {folder}/test/<class>/)"
        ) from None
    return names


def _samples(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) of every image under ``folder/<class>/``; a file that is not an image is an error.

    A folder split into train and test is scanned once, not once per split: the scan (every file's
    header opened) is kept while the class folders are unchanged.
    """
    if folder.is_dir():
        changed = tuple((folder / name).stat().st_mtime_ns for name in classes if (folder / name).is_dir())
        return list(_scan(folder, tuple(classes), changed))
    return _scan(folder, tuple(classes), ())


@cache
def _scan(folder: Path, classes: tuple[str, ...], changed: tuple[int, ...]) -> list[tuple[str, int]]:
    if not folder.is_dir():
        raise ZooError(
            f"data.root: {folder.parent} has train/ but no {folder.name}/ folder; add one with the same classes"
        )
    unknown = sorted(set(_class_names(folder)) - set(classes))
    if unknown:
        raise ZooError(f"data.root: {folder} has class folder(s) {unknown} that train/ lacks")
    samples = []
    for label, name in enumerate(classes):
        for path in _files_under(folder / name):
            if path.name.startswith("."):
                continue
            if not path.name.lower().endswith(IMG_EXTENSIONS):
                raise ZooError(f"data: {path} is not an image ({', '.join(IMG_EXTENSIONS)}); move it out of {folder}")
            with image_file(path, decode=False):  # the header only, of a regular file
                pass
            samples.append((str(path), label))
    if not samples:
        raise ZooError(f"data.root: no images under {folder}")
    return samples


def _files_under(top: Path) -> list[Path]:
    """Every file under ``top``, sorted: linked folders followed, as torchvision's ImageFolder does
    (``os.walk`` with ``followlinks``), and a folder that cannot be read or is reached twice (a link
    back up the tree, or to a folder already read) named in one line, not skipped or walked forever."""

    def unreadable(exc: OSError) -> None:
        raise ZooError(f"data: cannot read {exc.filename}: {exc.strerror}")

    files, walked = [], set()
    for root, _folders, names in os.walk(top, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in walked:
            raise ZooError(f"data: {root} is {real}, which is read already: remove the link to it")
        walked.add(real)
        files += [Path(root) / name for name in names]
    return sorted(files)


def _split(samples: list[tuple[str, int]], split: str, test_split: float, seed: int) -> list[tuple[str, int]]:
    """The train or test part of ``samples``: per class, a seeded ``test_split`` of them for testing."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    labels = torch.tensor([label for _, label in samples])
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = round(len(members) * test_split)
        part = members[:n_test] if split == "test" else members[n_test:]
        chosen += part.tolist()
    return [samples[i] for i in sorted(chosen)]
