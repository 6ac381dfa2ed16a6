"""Evaluation: a model's loss and metrics on a split, and a saved run evaluated again."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import artifacts, distributed, registry
from . import recipe as recipes
from .data import Batches, configure_images, load_splits
from .device import autocast_dtype, resolve_device
from .errors import ZooError
from .metrics import confusion_matrix, scores
from .model import load_run
from .recipe import LossConfig, check_args


def build_loss(config: LossConfig) -> nn.Module:
    """The recipe's loss plugin, called with its checked arguments."""
    factory = registry.get("loss", config.name).load()
    check_args(factory, config.args, "loss.args")
    try:
        return factory(**config.args)
    except ValueError as exc:
        raise ZooError(f"loss.args: {config.name} rejected its arguments: {exc}") from exc


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Batches, loss_fn: nn.Module, label_names: list[str], dtype: torch.dtype | None
) -> dict[str, Any]:
    """Loss, accuracy, macro precision/recall/F1, per-class rows and confusion matrix on a split."""
    model.eval()
    predictions, targets = [], []
    loss_sum = torch.zeros((), device=batches.device)
    for inputs, labels in batches.epoch():
        with torch.autocast(batches.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(inputs)
        loss_sum += loss_fn(logits.float(), labels) * len(labels)
        predictions.append(logits.argmax(1))
        targets.append(labels)
    matrix = confusion_matrix(torch.cat(predictions).cpu(), torch.cat(targets).cpu(), len(label_names))
    matrix = distributed.sum_across_ranks(matrix)  # each rank evaluated its share of the split
    loss_sum = distributed.sum_across_ranks(loss_sum)
    return {"loss": float(loss_sum) / max(1, int(matrix.sum())), **scores(matrix, label_names)}


def evaluate_run(folder: Path, split: str = "test", data_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate the model of a run folder on ``split`` of its own data (``data.*`` overrides allowed)."""
    model, label_names = load_run(folder)
    stored = artifacts.read_config(folder)["zoo"]["recipe"]
    for override in data_overrides:
        if not override.startswith("data."):
            raise ZooError(f"override {override!r}: only data.* keys can change when evaluating a run")
    recipes.apply_overrides(stored, data_overrides)
    recipe = recipes.from_dict(stored, str(folder / artifacts.CONFIG))
    splits = load_splits(recipe.data, recipe.train.seed)
    configure_images(splits, recipe.data, model)
    chosen = {"train": splits.train, "val": splits.val, "test": splits.test}[split]
    if chosen is None:
        raise ZooError(f"{folder} has no validation split (its data.val_split is 0); use --split test")
    if splits.label_names != label_names:
        raise ZooError(f"data.classes select {splits.label_names}, but the run was trained on {label_names}")
    device = resolve_device(recipe.train.device)
    batches = Batches(
        chosen, recipe.data.eval_batch_size, device, splits.mean, splits.std,
        num_workers=recipe.data.num_workers, channels_last=recipe.train.channels_last,
    )  # fmt: skip
    return evaluate(model.to(device), batches, build_loss(recipe.loss).to(device), label_names,
                    autocast_dtype(recipe.train.precision, device))  # fmt: skip
