"""``zoo run``, ``zoo show`` and ``zoo schema``: recipes, trained or printed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from .. import _output as output
from ..training import launch
from .group import print_table

RECIPE_ARGUMENT = click.argument("recipe_path", metavar="RECIPE")
OVERRIDES_ARGUMENT = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")


@click.command()
@RECIPE_ARGUMENT
@OVERRIDES_ARGUMENT
@click.option("--dry-run", is_flag=True, help="Build model, data and optimiser, print the parameter groups, stop.")
@click.option("--progress/--no-progress", default=True, help="Show progress (default: on).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the result: no progress, no per-epoch lines.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    help="text: bars on a terminal, else a plain line at most every 10 s; json: one JSON object a line on stdout.",
)
@click.option(
    "--resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[RUN]",
    help="Continue RUN (default: the newest run of this recipe under runs/) from its last checkpoint.",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    help="Train with N processes on this machine: shorthand for `torchrun --standalone --nproc_per_node N -m zoo run`.",
)
def run(
    recipe_path: str,
    overrides: tuple[str, ...],
    dry_run: bool,
    progress: bool,
    quiet: bool,
    log_format: str,
    resume: str | None,
    nproc: int,
) -> None:
    """Fine-tune, evaluate and save a run folder, as RECIPE declares.

    Overrides change any key for this run, typed as in TOML:

    \b
      zoo run recipes/mnist.toml train.epochs=1 optim.lr=3e-4 data.classes=[1,2]

    The run folder (default runs/<name>-<timestamp>) holds model.safetensors, config.json,
    recipe.toml (resolved), metrics.jsonl, results.json, a model card README.md and
    checkpoints/ (every epoch, and every train.checkpoint_every steps).

    \b
    A killed run continues exactly where its last checkpoint left it:
      zoo run recipes/mnist.toml --resume                 the newest run of this recipe
      zoo run recipes/mnist.toml --resume runs/mnist-...  that run
      zoo run recipes/mnist.toml --resume train.epochs=5  ...and train longer

    \b
    On several GPUs or machines, PyTorch's launcher starts one process per rank:
      torchrun --nproc_per_node 4 -m zoo run recipes/mnist.toml
      zoo run recipes/mnist.toml --nproc 4                the same, on this machine
    """

    from ..config import recipe as recipes
    from ..parallel.device import keep_freed_host_memory
    from ..parallel.distributed import end_with_launcher, is_main, rank_left, teardown
    from ..training.runner import latest_run
    from ..training.runner import run as run_recipe

    end_with_launcher()  # a rank of torchrun: first of all, never outlive the launcher
    choose_output(quiet, log_format)
    if resume and "=" in resume and not Path(resume).exists():  # `--resume train.epochs=5`: an override
        overrides, resume = (*overrides, resume), "latest"
    recipe = recipes.load(recipe_path, overrides)  # a mistake is reported once, before any process starts
    if nproc > 1:  # a dry run too: each rank builds what it would train (its share of FSDP, its format)
        flags = [*(["--resume", resume] if resume else []), *(["--dry-run"] if dry_run else []),
                 *([] if progress else ["--no-progress"]),
                 *(["--quiet"] if quiet else []), "--log-format", log_format]  # fmt: skip
        verbose = ["--verbose"] if click.get_current_context().find_root().params["verbose"] else []
        launch.torchrun(nproc, [*verbose, "run", recipe_path, *overrides, *flags])
        return
    keep_freed_host_memory()  # this process trains: its steps reuse the memory they free
    run_folder = None
    if resume:
        run_folder = latest_run(recipe) if resume == "latest" else Path(resume)
    try:
        result = run_recipe(recipe, progress=progress, dry_run=dry_run, resume=run_folder)
        main = is_main()
    except RuntimeError as exc:
        left = rank_left(exc)
        if left is None:
            raise
        if os.environ.get(launch.NOTES):  # the launching zoo says which rank ended first, and how
            sys.exit(launch.RANK_LEFT_EXIT)
        raise left from exc
    finally:  # a rank that leaves with its process group alive can abort at exit (gloo's threads)
        teardown()
    if result is None or not main:
        return
    results, summary = result.results, ""
    if results.test and output.current_format() == "quiet":  # the scores' line alone
        summary = f"test: {score_line(results.test)}\n"
    elif results.test and output.current_format() != "json":
        print_scores(results.test)
    output.result(f"{summary}run folder: {result.folder} ({results.state})", folder=str(result.folder),
                  **results.model_dump(mode="json", exclude_none=True))  # fmt: skip
    if results.state == "interrupted":
        sys.exit(130)


def choose_output(quiet: bool, log_format: str) -> None:
    """The form of what this command prints (zoo/_output.py); a library's own bars only under zoo's bars."""
    output.set_format("quiet" if quiet else "json" if log_format == "json" else "auto")
    if output.current_format() != "bars":
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def score_line(metrics: dict[str, Any]) -> str:
    if "mAP" in metrics:  # a multi-label run's
        return (
            f"mAP {100 * metrics['mAP']:.2f}% (micro {100 * metrics['mAP_micro']:.2f}%), at the thresholds: "
            f"F1 {100 * metrics['f1']:.2f}%, precision {100 * metrics['precision']:.2f}%, "
            f"recall {100 * metrics['recall']:.2f}%, all labels right {100 * metrics['accuracy']:.2f}%"
        )
    return (
        f"accuracy {100 * metrics['accuracy']:.2f}%, precision {100 * metrics['precision']:.2f}%, "
        f"recall {100 * metrics['recall']:.2f}%, F1 {100 * metrics['f1']:.2f}%"
    )


def print_scores(metrics: dict[str, Any], split: str = "test") -> None:
    """The scores of ``split`` in full: overall, per class, and (single-label) the confusion matrix."""
    click.echo(f"{split}: {score_line(metrics)}")
    if "mAP" in metrics:
        _print_multi_label(metrics)
        return
    rows = [
        (row["label"], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"]))
        for row in metrics["per_class"]
    ]
    print_table(rows, ("CLASS", "PRECISION", "RECALL", "F1", "SUPPORT"))
    labels = [row["label"] for row in metrics["per_class"]]
    click.echo("confusion matrix (rows: true class, columns: predicted):")
    print_table(
        [(label, *map(str, counts)) for label, counts in zip(labels, metrics["confusion_matrix"])], ("", *labels)
    )


def _print_multi_label(metrics: dict[str, Any]) -> None:
    rows = [
        (row["label"], "-" if row["ap"] is None else f"{row['ap']:.4f}", f"{row['threshold']:.3f}",
         f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"]))
        for row in metrics["per_class"]
    ]  # fmt: skip
    print_table(rows, ("LABEL", "AP", "THRESHOLD", "PRECISION", "RECALL", "F1", "SUPPORT"))


@click.command()
@RECIPE_ARGUMENT
@OVERRIDES_ARGUMENT
def show(recipe_path: str, overrides: tuple[str, ...]) -> None:
    """Print RECIPE fully resolved: bases merged, overrides applied, defaults filled in (a password in a
    tracker's URL shown as ***)."""
    from ..config import recipe as recipes
    from ..training.loggers.fan_out import without_passwords

    click.echo(without_passwords(recipes.load(recipe_path, overrides).to_toml()), nl=False)


@click.command()
def schema() -> None:
    """Print the recipe schema as JSON Schema (for TOML editors: completion and checks)."""
    from ..config.schema import json_schema

    click.echo(json.dumps(json_schema(), indent=2))
