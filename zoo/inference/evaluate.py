"""Evaluation: a model's loss and metrics on a split, and a saved run evaluated again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import write_text
from ..config import recipe as recipes
from ..data.batches import Batches
from ..data.splits import load_splits
from ..errors import ZooError
from ..models.build import load_run
from ..parallel import distributed, fsdp
from ..parallel.device import autocast_dtype, resolve_device
from ..parallel.device import configure as configure_backends
from ..runs.folder import RunFolder
from ..tasks import multi_label
from ..tasks.calibration import ECE_BINS, calibration_error, confidence_bins
from ..tasks.recipe_loss import build_loss
from ..tasks.single_label import confusion_matrix, scores
from .error_analysis import errors_csv
from .outputs import check_output
from .prepared import RunSetup, prepare_data

# Top-5 accuracy is reported from this many classes on (with fewer it says little).
TOP5_CLASSES = 10


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Batches,
    loss_fn: nn.Module,
    label_names: list[str],
    dtype: torch.dtype | None,
    between_batches: Callable[[], None] | None = None,
    thresholds: list[float] | None = None,
    tune: bool = False,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Loss, accuracy, macro precision/recall/F1, per-class rows, confusion matrix and expected
    calibration error on a split; the logits divided by ``temperature`` (``ece_uncalibrated``: the
    error without it, when it is not 1).

    Multi-label data (multi-hot labels) gets multi-label metrics instead (``multi_label.metrics``):
    at ``thresholds``, or with ``tune`` at the thresholds that maximise each class's F1 here, which
    ``metrics["thresholds"]`` then holds.

    ``between_batches`` is called after each batch that every rank has (the ranks' shares of a
    split differ by up to one batch): it may be a collective, such as the trainer's stop check.
    """
    model.eval()
    multi_label = batches.split.labels.dim() == 2
    predictions, targets = [], []
    loss_sum = torch.zeros((), device=batches.device)
    top5 = torch.zeros((), dtype=torch.long, device=batches.device)
    no_bins = torch.zeros(3, ECE_BINS, dtype=torch.double, device=batches.device)
    bins = dict.fromkeys({1.0, temperature}, no_bins)  # confidence bins of the logits divided by each
    common = -int(distributed.max_across_ranks(torch.tensor(-len(batches)))) if between_batches else 0
    for number, (inputs, labels) in enumerate(batches.epoch()):
        with torch.autocast(batches.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(inputs)
        if not multi_label:
            bins = {scale: found + confidence_bins(logits.float() / scale, labels) for scale, found in bins.items()}
        loss_sum += loss_fn(logits.float() / temperature, labels) * len(labels)
        if len(label_names) >= TOP5_CLASSES:
            top5 += (logits.topk(5, dim=1).indices == labels[:, None]).any(1).sum()
        predictions.append(logits.float().sigmoid() if multi_label else logits.argmax(1))
        targets.append(labels)
        if between_batches is not None and number < common:
            between_batches()
    if fsdp.is_sharded(model):  # its forward is a collective: the ranks with fewer batches call it too
        calls = int(distributed.max_across_ranks(torch.tensor(len(batches))))
        for _ in range(calls - len(batches)):
            with torch.autocast(batches.device.type, dtype=dtype, enabled=dtype is not None):
                model(torch.zeros(1, *batches.input_size, device=batches.device))
    loss_sum = distributed.sum_across_ranks(loss_sum)
    if multi_label:
        return _multi_label(predictions, targets, float(loss_sum), label_names, thresholds, tune)
    none = [torch.empty(0, dtype=torch.long)]  # a rank's share of a tiny split can be empty
    matrix = confusion_matrix(torch.cat(predictions or none).cpu(), torch.cat(targets or none).cpu(), len(label_names))
    matrix = distributed.sum_across_ranks(matrix)  # each rank evaluated its share of the split
    seen = max(1, int(matrix.sum()))
    metrics = {"loss": float(loss_sum) / seen, **scores(matrix, label_names)}
    errors = {scale: calibration_error(distributed.sum_across_ranks(found)) for scale, found in bins.items()}
    metrics["ece"] = errors[temperature]
    if temperature != 1.0:
        metrics["ece_uncalibrated"] = errors[1.0]
    if len(label_names) >= TOP5_CLASSES:
        metrics["top5_accuracy"] = int(distributed.sum_across_ranks(top5)) / seen
    return metrics


def _multi_label(
    probabilities: list[torch.Tensor],
    targets: list[torch.Tensor],
    loss_sum: float,
    label_names: list[str],
    thresholds: list[float] | None,
    tune: bool,
) -> dict[str, Any]:
    """Multi-label metrics over every rank's share of the split."""
    none = [torch.empty(0, len(label_names))]
    shares = distributed.all_gathered((torch.cat(probabilities or none).cpu(), torch.cat(targets or none).cpu()))
    scores, labels = (torch.cat(parts) for parts in zip(*shares))
    if tune:
        thresholds = multi_label.tune_thresholds(scores, labels)
    metrics = {"loss": loss_sum / max(1, len(labels)), **multi_label.metrics(scores, labels, label_names, thresholds)}
    return metrics | ({"thresholds": thresholds} if tune else {})


def evaluate_run(
    path: Path, split: str = "test", data_overrides: Sequence[str] = (), errors: Path | None = None
) -> dict[str, Any]:
    """Evaluate the model of a run folder on ``split`` of its own data (``data.*`` overrides allowed);
    ``errors``: write the misclassified items there as CSV (``metrics["errors"]``: how many), a file
    outside run folders or a new one in the run's own, never one of its files."""
    run = RunFolder.existing(path)
    if errors is not None:  # before anything is loaded: never one of the run's own files
        check_output(run, errors, None, "--errors")
    setup = run_setup(run, data_overrides)
    if split == "train" and setup.splits.streaming:
        raise ZooError(f"{path} trained on a stream (data.args.streaming), which zoo does not read to its end: "
                       "use --split test or --split val")  # fmt: skip
    chosen = {"train": setup.splits.train, "val": setup.splits.val, "test": setup.splits.test}[split]
    if chosen is None:
        raise ZooError(f"{path} has no validation split (its data.val_split is 0); use --split test")
    if len(chosen) == 0:  # a data.val_split that rounds to no image, or own val of none of data.classes
        raise ZooError(f"{path}: its {split} split holds no image of its classes; use --split test")
    if errors is not None:
        text, count = errors_csv(setup, chosen, run.thresholds, run.temperature)
        write_text(errors, text)
    metrics = evaluate(setup.model, setup.batches(chosen), setup.loss_fn, setup.splits.label_names, setup.dtype,
                    thresholds=run.thresholds, temperature=run.temperature)  # fmt: skip
    return metrics | ({"errors": count} if errors is not None else {})


def run_setup(run: RunFolder, data_overrides: Sequence[str] = ()) -> RunSetup:
    """A saved run's model with its own data, as its recipe (and ``data.*`` overrides) describe: no
    optimiser, no augmentation."""
    for override in data_overrides:
        if not override.startswith("data."):
            raise ZooError(f"override {override!r}: only data.* keys can change when evaluating a run")
    stored = run.recipe.to_dict()
    recipes.apply_overrides(stored, data_overrides)
    recipe = recipes.from_dict(stored, str(run.file(RunFolder.RECIPE)))
    device = distributed.setup(resolve_device(recipe.train.device))
    configure_backends(device, recipe.train.deterministic)
    splits = distributed.agreed(lambda: load_splits(recipe.data, recipe.train.seed))
    multi_label.resolve_task(recipe, splits, training=False)
    model, preprocessing = load_run(run), run.preprocessing
    if splits.label_names != model.label_names:
        raise ZooError(f"data.classes select {splits.label_names}, but the run was trained on {model.label_names}")
    cache, memory_format = prepare_data(recipe, splits, preprocessing, None, model, device, progress=True)
    loss_fn, weights = build_loss(recipe, splits, device)
    dtype = autocast_dtype(recipe.train.precision, device)
    return RunSetup(recipe, device, dtype, splits, preprocessing, model, loss_fn, class_weights=weights, cache=cache,
                    memory_format=memory_format)  # fmt: skip
