"""The search space of ``[tune]``: its keys checked against the recipe, and a trial's values drawn from it.

A space key is a recipe key, as a command-line override names it (``optim.lr``): each trial is the
recipe with one override per key. The space is checked up front by loading the recipe with each
key at its bounds (each choice, for a list), so a key that is not in the schema is the override's
one line with its did-you-mean, and a value the schema refuses is found before any trial runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from ..config import recipe as recipes
from ..config.schema import Recipe
from ..config.tune import Choice, Range, TuneConfig
from ..errors import ZooError
from ..training.monitor import LOWER_IS_BETTER

if TYPE_CHECKING:
    import optuna

# Keys a study sets itself, or that name no setting of the weights.
NOT_SEARCHED = ("name", "output", "log", "tune", "train.monitor", "train.device")


def direction(tune: TuneConfig) -> str:
    """The study's direction: the metric's own, which ``tune.direction`` may only repeat."""
    natural = "minimize" if tune.metric in LOWER_IS_BETTER else "maximize"
    if tune.direction not in (None, natural):
        raise ZooError(
            f"tune.direction = {tune.direction}, but {tune.metric} is better {'lower' if natural == 'minimize' else 'higher'} "
            f"(each run keeps its best epoch so): leave tune.direction out or set it to {natural}"
        )
    return natural


def check_metric(recipe: Recipe, tune: TuneConfig) -> None:
    """``tune.metric = "val_mAP"`` is a multi_label run's: on single-label data every trial would fail."""
    if tune.metric != "val_mAP" or recipe.task == "multi_label":
        return
    if recipe.task is None:
        from ..data.splits import load_splits

        if load_splits(recipe.data, recipe.train.seed).multi_label:  # label sets: a multi_label run
            return
    why = (
        'the recipe sets task = "single_label"'
        if recipe.task
        else f"dataset '{recipe.data.dataset}' gives one label an image"
    )
    raise ZooError(
        f"tune.metric = val_mAP is a multi_label run's metric, but {why}: use val_accuracy, val_f1 or val_loss"
    )


def override(key: str, value: Any) -> str:
    """``key=value`` as a command-line override, the value written as TOML."""
    return f"{key}={tomli_w.dumps({'v': value}).partition('=')[2].strip()}"


def check_space(path: Path, overrides: Sequence[str], tune: TuneConfig) -> None:
    """Every key of ``tune.space`` is a recipe key that takes each bound (each choice); else one line."""
    recipes.load(path, [*overrides, monitoring(tune)])  # a validation metric needs a validation split
    for key, spec in tune.space.items():
        reserved = next((name for name in NOT_SEARCHED if key == name or key.startswith(name + ".")), None)
        if reserved:
            raise ZooError(f"{path}: tune.space: {key} is not searched ({reserved} is the study's own or no setting)")
        if isinstance(spec, Range) and spec.step is not None and not spec.integers and _whole(spec.low, spec.high):
            raise ZooError(
                f"{path}: tune.space: {key}: step = {spec.step} between the integers {spec.low} and {spec.high} draws "
                f"fractions such as {spec.low + spec.step}: give an integer step, or float bounds "
                f"(low = {float(spec.low)}) for a float key"
            )
        values: list[Any] = [spec.low, spec.high] if isinstance(spec, Range) else list(spec)
        for value in values:
            try:
                recipes.load(path, [*overrides, monitoring(tune), override(key, value)])
            except ZooError as exc:
                reason = str(exc).removeprefix(f"override {key}: ").removeprefix(f"{path}: ")
                raise ZooError(f"{path}: tune.space: {override(key, value)}: {reason}") from None


def _whole(*values: Any) -> bool:
    return all(type(value) is int for value in values)


def suggest(trial: optuna.Trial, key: str, spec: Range | list[Choice]) -> Any:
    """The trial's value of ``key``, drawn by Optuna from ``spec``."""
    if not isinstance(spec, Range):
        return trial.suggest_categorical(key, spec)
    if spec.integers:
        return trial.suggest_int(key, spec.low, spec.high, step=spec.step or 1, log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)


def monitoring(tune: TuneConfig) -> str:
    """The override that makes a trial keep, and report, the epoch best by the study's metric."""
    return f"train.monitor={tune.metric}"


def trial_overrides(overrides: Sequence[str], tune: TuneConfig, params: dict[str, Any], folder: Path) -> list[str]:
    """The command-line overrides of a trial's `zoo run`: the study's, its values, the metric, its folder."""
    values = [override(key, value) for key, value in params.items()]
    return [*overrides, *values, monitoring(tune), override("output.dir", str(folder))]
