"""Run folders side by side: a table of runs, and what differs between chosen ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.schema import Recipe
from ..errors import ZooError
from .folder import RunFolder, RunResults

COLUMNS = ("name", "recipe", "backbone", "dataset", "state", "kept", "best_val", "test_acc", "duration", "path")


def find_runs(paths: list[Path]) -> list[RunFolder]:
    """Each path that is a run folder, and the run folders directly inside the others."""
    found = []
    for path in paths:
        if not path.is_dir():
            raise ZooError(f"no such folder: {path}")
        if (path / RunFolder.RECIPE).is_file():
            found.append(RunFolder(path))
        else:
            found += [RunFolder(p.parent) for p in sorted(path.glob(f"*/{RunFolder.RECIPE}"))]
    return found


def summary(run: RunFolder) -> dict[str, Any]:
    """A row of `zoo runs`; a damaged run folder is a row that says so, not the end of the table."""
    try:
        recipe, results = run.recipe, run.results
    except ZooError as exc:
        return dict.fromkeys([*COLUMNS, "test_f1", "training", "processes"]) | {
            "name": run.path.name,
            "state": f"damaged ({exc})",
            "path": str(run.path),
        }
    test = (results.test if results else None) or {}
    return {
        "name": run.path.name,
        "recipe": recipe.name,
        "backbone": recipe.model.backbone,
        "dataset": recipe.data.dataset,
        "state": run.state_of(results),
        "kept": kept(results) if results else None,
        "training": training_notes(recipe, results) if results else None,
        "best_val": results.best_val_accuracy if results else None,
        "test_acc": test.get("accuracy"),
        "test_f1": test.get("f1"),
        "duration": results.train_seconds if results else None,
        "processes": results.world_size if results else None,  # the global batch is data.batch_size times it
        "path": str(run.path),
    }


def kept(results: RunResults) -> str | None:
    """Which epoch's weights the run holds: ``best 28/30``, ``last 30/30``, ``best 9/12 early``."""
    if results.kept is None or results.kept_epoch is None:
        return None
    return f"{results.kept} {results.kept_epoch}/{results.epochs}" + (" early" if results.stopped_early else "")


def training_notes(recipe: Recipe, results: RunResults | None) -> list[str]:
    """How the kept weights came about, in lines for the model card and `zoo runs --json`."""
    train, data = recipe.train, recipe.data
    notes = []
    if results is not None and results.kept_epoch is not None:
        value = f" ({results.monitor} {results.kept_value:.4f})" if results.kept_value is not None else ""
        which = "the best epoch by " + str(results.monitor) if results.kept == "best" else "the last epoch"
        notes.append(f"weights: {which}, epoch {results.kept_epoch} of {results.epochs}{value}")
        if results.stopped_early:
            notes.append(results.reason)
    if train.ema:
        notes.append(f"exponential moving average of the weights, decay {train.ema:g}")
    if data.mixup or data.cutmix:
        notes.append(
            f"MixUp alpha {data.mixup:g}, CutMix alpha {data.cutmix:g} (batches mixed with p={data.mix_prob:g})"
        )
    if results is not None and results.class_weights:
        notes.append("class weights " + ", ".join(f"{weight:.3g}" for weight in results.class_weights))
    if data.sampler == "balanced":
        notes.append("class-balanced sampling")
    if results is not None and results.augmentation:
        notes.append(f"augmentation ({data.augment}): {results.augmentation}")
    return notes


def value_at(recipe: dict[str, Any], key: str) -> Any:
    node: Any = recipe
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
