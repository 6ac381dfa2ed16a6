"""The one reader of a dataset plugin's object, and the check of its contract (``zoo.plugins.contracts``).

``facts`` reads the optional attributes of ``DatasetOptions``, each checked for its declared
type; every part of zoo that asks what a dataset offers asks it here. ``check_dataset`` runs when
zoo loads a dataset plugin: the required parts, then every optional one in full (each target, each
sample's pair), and the first sample, so a plugin that breaks the contract is named in one line
before any training. What torchvision-style plugins commonly give is taken as it is: numpy targets
and labels, numpy or tensor statistics, class names that are not strings (named by ``str``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..plugins.contracts import ContractError

INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass(frozen=True)
class DatasetFacts:
    """A dataset's optional attributes as zoo uses them; None where it has none."""

    targets: Sequence[int] | torch.Tensor | np.ndarray | None
    images: torch.Tensor | None  # uint8 N x C x H x W
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    takes_transform: bool
    samples: list[tuple[str, int]] | None
    augmentation: dict[str, Any] | None
    hub_dataset: str | None
    fingerprint: str | None = None
    pinned_args: dict[str, Any] | None = None
    validation: Any = None  # a dataset
    label_sets: bool = False  # targets hold a set of class indices per sample: multi-label data

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    @property
    def gives_images(self) -> bool:
        """Whether samples are PIL images, which need transforms (an in-memory dataset is batched as tensors)."""
        return self.takes_transform and not self.in_memory

    @property
    def files(self) -> list[str] | None:
        return [str(path) for path, _ in self.samples] if self.samples is not None else None


def facts(dataset: object, name: str | None = None) -> DatasetFacts:
    """``dataset``'s optional attributes, each of its declared type (``name``: the plugin, for errors)."""
    broken = _breach(name)
    images = getattr(dataset, "images", None)
    if images is not None and not (
        isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4
    ):
        described = (
            f"{images.dtype} tensor of shape {list(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise broken(f"`images` must be a uint8 N x C x H x W tensor, not a {described}")
    targets = getattr(dataset, "targets", None)
    if targets is not None and not isinstance(targets, torch.Tensor | np.ndarray | Sequence):
        raise broken(f"`targets` must be a sequence or tensor of int labels, not {type(targets).__name__}")
    samples = getattr(dataset, "samples", None)
    if samples is not None and not isinstance(samples, list):
        raise broken(f"`samples` must be a list of (path, label), not {type(samples).__name__}")
    augmentation = getattr(dataset, "augmentation", None)
    if augmentation is not None and not isinstance(augmentation, Mapping):
        raise broken(f"`augmentation` must be a mapping, not {type(augmentation).__name__}")
    hub_dataset = getattr(dataset, "hub_dataset", None)
    if hub_dataset is not None and not (isinstance(hub_dataset, str) and hub_dataset.strip()):
        raise broken(f"`hub_dataset` must be a non-empty str (a Hub dataset id), not {hub_dataset!r}")
    fingerprint = getattr(dataset, "fingerprint", None)
    if fingerprint is not None and not (isinstance(fingerprint, str) and fingerprint.strip()):
        raise broken(f"`fingerprint` must be a non-empty str, not {fingerprint!r}")
    pinned_args = getattr(dataset, "pinned_args", None)
    if pinned_args is not None and not (
        isinstance(pinned_args, Mapping) and all(isinstance(k, str) and k.isidentifier() for k in pinned_args)
    ):
        raise broken(f"`pinned_args` must map data.args names to values, not {pinned_args!r}")
    validation = getattr(dataset, "validation", None)
    if validation is not None and getattr(validation, "classes", None) != getattr(dataset, "classes", None):
        raise broken("`validation` must be a dataset of the same `classes`")
    return DatasetFacts(
        targets=targets,
        images=images,
        mean=_statistics(dataset, "mean", images, broken),
        std=_statistics(dataset, "std", images, broken),
        takes_transform=hasattr(dataset, "transform"),
        samples=samples,
        augmentation=dict(augmentation) if augmentation is not None else None,
        hub_dataset=hub_dataset,
        fingerprint=fingerprint,
        pinned_args=dict(pinned_args) if pinned_args is not None else None,
        validation=validation,
        label_sets=_label_sets(targets),
    )


def _label_sets(targets: object) -> bool:
    """Whether ``targets`` give each sample a set of labels (tuples, lists or sets of class indices)."""
    return isinstance(targets, Sequence) and len(targets) > 0 and isinstance(targets[0], tuple | list | set | frozenset)


def check_dataset(name: str, dataset: object) -> DatasetFacts:
    """``dataset``, just made by plugin ``name``, against the whole dataset contract; its facts."""
    broken = _breach(name)
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, str) or not isinstance(classes, Sequence) or not classes:
        raise broken("`classes` must list its label names (a non-empty sequence)")
    if len({str(label) for label in classes}) != len(classes):
        raise broken(f"`classes` names a class twice: {list(map(str, classes))}")
    try:
        length = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise broken("it has no len()") from None
    except ValueError:  # Python's own check of __len__'s value: negative, or beyond an index
        raise broken("its len() is not a count of samples") from None
    found = facts(dataset, name)
    if found.label_sets:
        if len(found.targets) != length or not all(_is_label_set(labels, len(classes)) for labels in found.targets):
            raise broken(f"`targets` must hold one set of labels in 0..{len(classes) - 1} per sample ({length})")
    elif found.targets is not None:
        try:
            targets = torch.as_tensor(np.asarray(found.targets))
        except (TypeError, ValueError):
            raise broken("`targets` must be int labels, one per sample") from None
        if (
            targets.dim() != 1
            or len(targets) != length
            or targets.dtype not in INTEGER_DTYPES
            or (length and not 0 <= int(targets.min()) <= int(targets.max()) < len(classes))
        ):
            raise broken(f"`targets` must hold one label in 0..{len(classes) - 1} per sample ({length})")
    if found.images is not None and len(found.images) != length:
        raise broken(f"`images` holds {len(found.images)} images for {length} samples")
    if found.samples is not None and (
        len(found.samples) != length or not all(isinstance(s, tuple) and len(s) == 2 for s in found.samples)
    ):
        raise broken(f"`samples` must list (path, label) for each of its {length} samples")
    if length:
        _check_sample(dataset, found, len(classes), broken)
    return found


def _check_sample(dataset: Any, found: DatasetFacts, classes: int, broken: Callable[[str], ContractError]) -> None:
    item = dataset[0]
    if not (isinstance(item, tuple | list) and len(item) == 2):
        raise broken(f"dataset[0] must be a (sample, label) pair, not {type(item).__name__}")
    sample, label = item
    if found.label_sets:
        if not _is_label_set(label, classes):
            raise broken(f"dataset[0]'s label must be a set of ints in 0..{classes - 1}, not {label!r}")
    elif isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < classes:
        raise broken(f"dataset[0]'s label must be an int in 0..{classes - 1}, not {label!r}")
    wanted = (Image.Image,) if found.gives_images else (torch.Tensor,)
    if not isinstance(sample, wanted):
        form = "a PIL image (it takes a `transform`)" if found.gives_images else "a C x H x W tensor"
        raise broken(f"dataset[0]'s sample must be {form}, not {type(sample).__name__}")


def _is_label_set(labels: object, classes: int) -> bool:
    return isinstance(labels, tuple | list | set | frozenset) and all(
        isinstance(label, numbers.Integral) and not isinstance(label, bool) and 0 <= label < classes for label in labels
    )


def _statistics(
    dataset: object, key: str, images: torch.Tensor | None, broken: Callable[[str], ContractError]
) -> tuple[float, ...] | None:
    values = getattr(dataset, key, None)
    if values is None:
        return None
    try:
        given = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        given = None
    if given is None or given.ndim != 1 or not len(given) or not np.isfinite(given).all():
        raise broken(f"`{key}` must be finite numbers, one per channel, not {values!r}")
    if key == "std" and (given <= 0).any():
        raise broken(f"`std` must be positive: it divides the images, not {values!r}")
    if images is not None and len(given) != images.shape[1]:
        raise broken(f"`{key}` has {len(given)} values for images of {images.shape[1]} channel(s)")
    return tuple(float(v) for v in given)


def _breach(name: str | None) -> Callable[[str], ContractError]:
    """A maker of one-line ContractErrors naming the plugin ``name`` (or "the dataset")."""
    who = f"dataset plugin '{name}'" if name else "the dataset"

    def breach(part: str) -> ContractError:
        return ContractError(f"{who} breaks the dataset contract: {part}")

    return breach
