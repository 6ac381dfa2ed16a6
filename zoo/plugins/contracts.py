"""What a plugin provides: the dataset, model and loss contracts, as typed Protocols.

A plugin is an entry point whose target zoo calls (``zoo.plugins._registry.instantiate``); these
Protocols say what the returned object must offer and what zoo reads from it, required and
optional. ``zoo.data.contract`` is the one reader of a dataset's optional attributes and checks a
dataset against ``DatasetPlugin`` and ``DatasetOptions`` when zoo loads it, so that a plugin that
breaks its contract is named in one line (``ContractError``). The model and loss Protocols
document what ``zoo.models.build`` and training read; tests/test_contracts.py checks every
installed plugin against all three. README.md's "Writing a plugin" lists the same parts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from ..errors import ZooError


class ContractError(ZooError):
    """A plugin's object breaks its contract: one line naming the plugin and the broken part."""


@runtime_checkable
class DatasetPlugin(Protocol):
    """Required of the object a dataset plugin's factory returns.

    The factory is called as ``factory(root: Path, split: "train" | "test", **data.args)``.
    """

    classes: Sequence[str]  # distinct label names, at least one: label i is classes[i] (others become str)

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """``(sample, label)``: a C x H x W float tensor (normalised), or a PIL image for a dataset
        with ``transform``; ``label`` an integer (Python or numpy) in ``range(len(classes))``."""
        ...


class DatasetOptions(Protocol):
    """Optional: each attribute is read when the dataset has it (a missing one means the default said)."""

    # Every sample's label, as __getitem__ gives it: zoo splits by class without reading samples.
    targets: Sequence[int] | torch.Tensor | np.ndarray  # 1-D integers
    # The samples in memory, as one uint8 N x C x H x W tensor: batched and normalised on the device.
    images: torch.Tensor
    # Per-channel statistics that normalise ``images`` (default 0 and 1: the tensors as they are).
    mean: Sequence[float] | torch.Tensor | np.ndarray  # finite, one per channel
    std: Sequence[float] | torch.Tensor | np.ndarray  # positive, one per channel
    # The dataset gives PIL images and takes a torchvision-style transform, which zoo sets (timm's,
    # following the model and [data]); None until then.
    transform: Callable[[Any], Any] | None
    # torchvision's (path, label) of every item: the image files that data.cache decodes once.
    samples: list[tuple[str, int]]
    # What training may do to a sample and keep its label: Augmentation's fields (hflip, scale, ...).
    augmentation: Mapping[str, Any]
    # The same data on the Hugging Face Hub ("ylecun/mnist"), which a model card names.
    hub_dataset: str
    # What identifies the samples when they are not files (no ``samples``): data.cache keys the decoded
    # cache by it and decodes the dataset's own PIL images (a Hub dataset's commit, split and fingerprint).
    fingerprint: str
    # The dataset's own validation split, a dataset of the same classes and form (a Hub dataset's
    # "validation"): zoo validates on it rather than hold out data.val_split of the training split.
    validation: Any
    # data.args that make a later run read the same data (a Hub dataset's resolved commit as ``revision``):
    # the run records them in its recipe, so --resume and a re-run of it read what this run read.
    pinned_args: Mapping[str, Any]


class ModelFactory(Protocol):
    """A model plugin's factory: called with ``model.args``, and with each of these it takes and the
    recipe leaves out: ``pretrained: bool``, ``in_chans: int`` (a tensor dataset's channels),
    ``image_size: int`` (a backbone built for one square size), and for a factory that builds its own
    head ``num_classes: int``, ``drop_rate: float`` and ``img_size`` (where its ``fixed_input_size``
    attribute is true)."""

    def __call__(self, **args: Any) -> nn.Module: ...


@runtime_checkable
class Backbone(Protocol):
    """What a factory without ``num_classes`` returns: zoo adds the head."""

    num_features: int  # the width of the features that forward gives

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """B x C x H x W inputs to B x num_features features."""
        ...


@runtime_checkable
class OwnHeadModel(Protocol):
    """What a factory with ``num_classes`` returns (the timm way): the whole classifier."""

    num_features: int
    pretrained_cfg: dict[str, Any]  # timm's: input_size, mean, std, num_classes, hf_hub_id, first_conv, ...

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """B x C x H x W inputs to B x num_classes logits."""
        ...

    def get_classifier(self) -> nn.Module: ...

    def reset_classifier(self, num_classes: int) -> None: ...


class LossFactory(Protocol):
    """A loss plugin's factory: called with ``loss.args`` (and ``weight``, a float tensor of one weight
    per class, where it takes one and the recipe sets ``loss.class_weights``)."""

    def __call__(self, **args: Any) -> nn.Module: ...


@runtime_checkable
class Loss(Protocol):
    """What a loss factory returns. Optional: ``soft_targets = True`` where it takes class
    probabilities (B x classes) as targets too, which data.mixup and data.cutmix give;
    ``multi_label = True`` for a loss of multi-label data, whose targets are B x classes multi-hot rows."""

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """B x classes logits and B class indices to a scalar loss."""
        ...
