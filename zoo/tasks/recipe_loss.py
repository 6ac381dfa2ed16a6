"""The loss a recipe trains and evaluates with: its plugin, given the class weights the data asks for."""

from __future__ import annotations

import torch
from torch import nn

from ..config.schema import Recipe
from ..data.splits import Splits, class_weights
from ..errors import ZooError
from ..plugins import _registry as registry
from .multi_label import positive_weights


def build_loss(recipe: Recipe, splits: Splits, device: torch.device) -> tuple[nn.Module, list[float] | None]:
    """The recipe's loss on ``device``, and its class weights (``loss.class_weights``, None without)."""
    name, args = recipe.loss.name, recipe.loss.args
    if splits.multi_label and name == "cross_entropy" and not args:
        name = "bce"  # the default loss, on multi-label data: binary cross-entropy with logits
    weights = _class_weights(recipe.loss.class_weights, splits) if recipe.loss.class_weights else None
    supplied = {}
    if weights is not None:
        if not registry.takes(registry.check("loss", name, args), "weight"):
            raise ZooError(f"loss.class_weights: loss '{name}' takes no class weights (it has no `weight` "
                           "parameter); use cross_entropy or nll, or remove loss.class_weights")  # fmt: skip
        supplied["weight"] = torch.tensor(weights, dtype=torch.float32)
    loss_fn = registry.instantiate("loss", name, args, **supplied)
    if not isinstance(loss_fn, nn.Module):  # zoo moves it to the device and trains through it
        raise ZooError(f"loss.name = '{name}': the loss plugin returned a {type(loss_fn).__name__}, not a "
                       "torch.nn.Module; a loss plugin's factory must return an nn.Module (wrap a function in one)")  # fmt: skip
    if splits.multi_label != bool(getattr(loss_fn, "multi_label", False)):
        if splits.multi_label:
            raise ZooError(f"loss.name = '{name}' takes one class an image, but the task is multi_label: use "
                           "loss.name = \"bce\" or \"asl\" (or a loss plugin that sets `multi_label = True`)")  # fmt: skip
        raise ZooError(f"loss.name = '{name}' is a multi-label loss (multi-hot targets), but the task is "
                       "single_label: use cross_entropy, or set task = \"multi_label\"")  # fmt: skip
    if (recipe.data.mixup or recipe.data.cutmix) and not takes_soft_targets(loss_fn):
        raise ZooError(
            f"data.mixup and data.cutmix mix the labels too, but loss '{name}' takes class indices only; "
            "use cross_entropy (or a loss plugin that sets `soft_targets = True`)"
        )
    return loss_fn.to(device), weights


def _class_weights(setting: str | list[float], splits: Splits) -> list[float]:
    """``loss.class_weights``: for multi-label data with "balanced", each class's negatives over positives."""
    if splits.multi_label and setting == "balanced":
        return positive_weights(splits.train.labels)
    return class_weights(setting, splits)


def takes_soft_targets(loss_fn: nn.Module) -> bool:
    """Whether ``loss_fn`` takes class probabilities as targets: torch's cross-entropy does; a
    plugin's loss says so with ``soft_targets = True``."""
    return bool(getattr(loss_fn, "soft_targets", isinstance(loss_fn, nn.CrossEntropyLoss)))
