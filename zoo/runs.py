"""Run folders side by side: a table of runs, and what differs between chosen ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifacts import RunFolder
from .errors import ZooError

COLUMNS = ("name", "recipe", "backbone", "dataset", "state", "best_val", "test_acc", "duration", "path")


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
        return dict.fromkeys([*COLUMNS, "test_f1"]) | {
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
        "state": results.state if results else "unknown",
        "best_val": results.best_val_accuracy if results else None,
        "test_acc": test.get("accuracy"),
        "test_f1": test.get("f1"),
        "duration": results.train_seconds if results else None,
        "path": str(run.path),
    }


def value_at(recipe: dict[str, Any], key: str) -> Any:
    node: Any = recipe
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
