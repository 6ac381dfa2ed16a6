"""What every experiment tracker (MLflow, W&B) is told about a run, whatever its own API.

- parameters: the resolved recipe, flat, under dotted keys (``optim.lr``, ``data.batch_size``);
- tags: zoo's version, the recipe's hash, the backbone and its pretrained source, the dataset and
  the revision it was read at;
- metrics: each record under the names of metrics.jsonl and results.json; records logged between
  epochs under ``step/`` (as in TensorBoard), so that a running loss never mixes with an epoch's;
- the final results: the test metrics as ``test_accuracy``, ``test_f1``, ...;
- the tracker's run id, kept in the run folder's tracking.json, so that ``--resume`` continues it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..._version import __version__
from ...config import recipe as recipes
from ...errors import ZooError
from ...runs.folder import RunFolder

STEP_PREFIX = "step/"


# Not the run's settings but where it reports: a tracker's URI may hold a password, which no tracker gets.
NOT_PARAMETERS = ("log",)


def parameters(recipe: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``recipe``'s values under dotted keys (``[log]`` left out); a list stays one value."""
    flat: dict[str, Any] = {}
    for key, value in recipe.items():
        if not prefix and key in NOT_PARAMETERS:
            continue
        if isinstance(value, Mapping) and value:
            flat |= parameters(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def tags(recipe: Mapping[str, Any]) -> dict[str, str]:
    model, data = recipe["model"], recipe["data"]
    found = {
        "zoo.version": __version__,
        "zoo.recipe_hash": recipes.from_dict(dict(recipe)).hash,
        "zoo.backbone": model["backbone"],
        "zoo.pretrained": str(model.get("pretrained", "none")),
        "zoo.dataset": data["dataset"],
    }
    revision = (data.get("args") or {}).get("revision")
    if revision:
        found["zoo.dataset_revision"] = str(revision)
    return found


def metric_names(metrics: Mapping[str, float], epoch: int | None) -> dict[str, float]:
    """An epoch's record under its own names (with ``epoch``); a record between epochs under ``step/``."""
    if epoch is None:
        return {STEP_PREFIX + key: float(value) for key, value in metrics.items()}
    return {"epoch": float(epoch), **{key: float(value) for key, value in metrics.items()}}


def final_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """results.json's numbers: the test split's overall metrics (``test_accuracy``, ...) and the run's own."""
    found = {
        f"test_{key}": float(value)
        for key, value in (results.get("test") or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    for key in ("best_val_accuracy", "train_seconds", "kept_value"):
        if isinstance(results.get(key), int | float):
            found[key] = float(results[key])
    return found


def remembered_run(run: Path, tracker: str) -> str | None:
    """The tracker's run id this run folder kept; a damaged tracking.json starts a new tracker run, said once."""
    try:
        return RunFolder(run).tracker_run(tracker)
    except ZooError as exc:
        print(f"zoo: warning: {exc}; the {tracker} logger starts a new run", file=sys.stderr, flush=True)
        return None


def remember_run(run: Path, tracker: str, run_id: str) -> None:
    """Keep the tracker's run id for --resume; a tracking.json that cannot be written (a folder there)
    costs only that, said once: the run and its tracker go on."""
    try:
        RunFolder(run).write_tracker_run(tracker, run_id)
    except ZooError as exc:
        print(f"zoo: warning: {exc}; a --resume will start a new {tracker} run", file=sys.stderr, flush=True)
