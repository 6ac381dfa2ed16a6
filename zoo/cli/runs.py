"""``zoo runs``: the run folders on this machine, as a table or compared side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import ZooError
from .group import print_table


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option("--compare", is_flag=True, help="Show how the given runs' recipes differ, next to their metrics.")
@click.option(
    "--sort",
    "sort_by",
    default="name",
    show_default=True,
    type=click.Choice(["name", "recipe", "state", "best_val", "test_acc", "duration"]),
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def runs(paths: tuple[str, ...], compare: bool, sort_by: str, as_json: bool) -> None:
    """A table of the runs in PATHS (default: runs/), or --compare RUN RUN... side by side."""

    from ..config.recipe import differing_keys
    from ..runs import table as run_folders

    folders = run_folders.find_runs([Path(p) for p in paths or ["runs"]])
    summaries = [run_folders.summary(folder) for folder in folders]
    if compare:
        if len(folders) < 2:
            raise ZooError("--compare needs at least two run folders")
        recipes = [_without_passwords(folder.recipe.to_dict()) for folder in folders]
        keys = [key for key in differing_keys(recipes) if key != "output.dir"]
        if as_json:
            table = {key: [run_folders.value_at(recipe, key) for recipe in recipes] for key in keys}
            click.echo(json.dumps({"runs": summaries, "differences": table}, indent=2))
            return
        rows = [(key, *(json.dumps(run_folders.value_at(r, key)) for r in recipes)) for key in keys]
        rows += [
            (metric, *(_cell(metric, s[metric]) for s in summaries))
            for metric in ("processes", "state", "kept", "best_val", "test_acc", "test_f1", "duration")
        ]
        print_table(rows, ("KEY", *(s["name"] for s in summaries)))
        return
    summaries.sort(key=lambda s: (s[sort_by] is None, s[sort_by]), reverse=sort_by in ("best_val", "test_acc"))
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
        return
    rows = [tuple(_cell(column, s[column]) for column in run_folders.COLUMNS) for s in summaries]
    print_table(rows, [column.upper() for column in run_folders.COLUMNS])


def _without_passwords(value: Any) -> Any:
    """A recipe's values with the credentials of any URL hidden (a tracker's tracking_uri may hold a password)."""
    from ..training.loggers.fan_out import without_passwords

    if isinstance(value, str):
        return without_passwords(value)
    if isinstance(value, dict):
        return {key: _without_passwords(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_passwords(item) for item in value]
    return value


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column in ("best_val", "test_acc", "test_f1"):
        return f"{100 * value:.2f}%"
    if column == "duration":
        return f"{int(value // 60)}m{value % 60:04.1f}s"
    return str(value)
