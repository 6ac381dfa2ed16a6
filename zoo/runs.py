"""Run folders side by side: a table of runs, and what differs between chosen ones."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from . import artifacts
from .errors import ZooError

COLUMNS = ("name", "recipe", "backbone", "dataset", "state", "best_val", "test_acc", "duration", "path")


def find_runs(paths: list[Path]) -> list[Path]:
    """Each path that is a run folder, and the run folders directly inside the others."""
    found = []
    for path in paths:
        if not path.is_dir():
            raise ZooError(f"no such folder: {path}")
        if (path / artifacts.RECIPE).is_file():
            found.append(path)
        else:
            found += sorted(p.parent for p in path.glob(f"*/{artifacts.RECIPE}"))
    return found


def read_recipe(folder: Path) -> dict[str, Any]:
    try:
        return tomllib.loads((folder / artifacts.RECIPE).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ZooError(f"{folder}: cannot read its {artifacts.RECIPE}: {exc}") from None


def summary(folder: Path) -> dict[str, Any]:
    recipe = read_recipe(folder)
    results = artifacts.read_results(folder) or {}
    test = results.get("test") or {}
    return {
        "name": folder.name,
        "recipe": recipe.get("name", "?"),
        "backbone": recipe.get("model", {}).get("backbone", "?"),
        "dataset": recipe.get("data", {}).get("dataset", "?"),
        "state": results.get("state", "unknown"),
        "best_val": results.get("best_val_accuracy"),
        "test_acc": test.get("accuracy"),
        "test_f1": test.get("f1"),
        "duration": results.get("train_seconds"),
        "path": str(folder),
    }


def value_at(recipe: dict[str, Any], key: str) -> Any:
    node: Any = recipe
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
