"""The ``zoo`` command line.

Start-up must stay fast: torch, timm and plugin modules are imported inside the commands that
need them, never at the top of this module.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ._version import __version__
from .errors import ZooError
from .plugins import _registry as registry
from .training import launch

KIND_CHOICES = {"models": "model", "datasets": "dataset", "losses": "loss"}


class UserError(click.ClickException):
    """A ZooError on its way out: one line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        line = f"zoo: error: {self.format_message()}"
        if not launch.leave_user_error(line):  # under `zoo run --nproc` the launcher reports it, once
            click.echo(line, err=True)


class ZooGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ZooError as exc:
            raise UserError(str(exc)) from exc
        except KeyboardInterrupt:  # Ctrl-C outside training (which saves and exits 130 itself): the shell's code,
            sys.exit(130)  # without click's "Aborted!" (once per rank under torchrun)


@click.group(cls=ZooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zoo")
@click.option(
    "-v", "--verbose", is_flag=True, help="Also show what libraries (huggingface_hub, timm, torch) log and warn."
)
def cli(verbose: bool) -> None:
    """zoo: a plugin-based model zoo and fine-tuning registry for PyTorch.

    Models, datasets and losses are plugins found through Python entry points; recipes (TOML
    files) put them together into a fine-tuning run.

    \b
    Quick start:
      zoo list                              what is installed
      zoo info mnist_cnn                    a plugin's arguments
      zoo run recipes/mnist_finetune.toml   fine-tune, evaluate and save a run folder

    Environment: ZOO_DATA_DIR (datasets, default ~/.cache/zoo/data), ZOO_CACHE_DIR (cached
    runs, default ~/.cache/zoo), ZOO_STRICT_PLUGINS=1 (a broken plugin is an error).
    """
    route_library_output(verbose)


def route_library_output(verbose: bool) -> None:
    """Send what libraries log, and Python warnings, through ``logging`` to one handler on stderr that
    shows them with --verbose only: otherwise a library's passing remark (huggingface_hub's "Ignored
    error while writing ..." with an unwritable cache) would come before the user's one error line.

    huggingface_hub brings its own stderr handler, so its records are sent up to the root instead.
    """
    import logging

    from huggingface_hub.utils import logging as hub_logging

    hub_root = hub_logging.get_logger()
    for handler in list(hub_root.handlers):
        hub_root.removeHandler(handler)
    hub_logging.enable_propagation()
    logging.captureWarnings(True)
    root = logging.getLogger()
    for handler in [handler for handler in root.handlers if handler.get_name() == "zoo"]:  # an earlier command's
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("zoo")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)  # present either way: no lastResort
    root.addHandler(handler)
    if verbose:
        root.setLevel(logging.INFO)


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


@cli.command("list")
@click.argument("kind", required=False, type=click.Choice(sorted(KIND_CHOICES)))
@click.argument("pattern", required=False)
@click.option(
    "--pretrained",
    is_flag=True,
    help="Only models with pretrained weights, as NAME.TAG (in a namespace: 'timm/resnet*').",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(kind: str | None, pattern: str | None, pretrained: bool, as_json: bool) -> None:
    """List plugins: all kinds, or only KIND, whose names match the glob PATTERN.

    Reads entry-point metadata only: no plugin is imported, so a broken plugin cannot break
    the listing (`zoo plugins` checks that each one loads). A namespace such as timm/* is one
    row until PATTERN reaches inside it:

    \b
      zoo list models 'timm/resnet*'               timm's ResNets
      zoo list models 'timm/resnet*' --pretrained  their pretrained weights (tags)
    """
    if registry.strict_plugins():
        registry.load_all(KIND_CHOICES.get(kind))  # raises on the first broken plugin
    found = registry.plugins(KIND_CHOICES[kind] if kind else None, pattern, pretrained)
    if as_json:
        click.echo(json.dumps([_describe(p) for p in found], indent=2))
        return
    if not found:
        raise ZooError(f"no {kind or 'plugins'} match {pattern!r}" if pattern else "no plugins are installed")
    print_table(
        [(p.name, p.kind, p.provider, p.version, p.description) for p in found],
        ("NAME", "KIND", "PROVIDER", "VERSION", "DESCRIPTION"),
    )


def _describe(plugin: registry.Plugin) -> dict[str, str]:
    return {
        "name": plugin.name,
        "kind": plugin.kind,
        "provider": plugin.provider,
        "version": plugin.version,
        "target": plugin.target,
        "description": plugin.description,
    }


@cli.command()
@click.argument("name")
def info(name: str) -> None:
    """Show a plugin's kind, provider, arguments (with defaults and types) and docstring."""
    provider, _, bare = name.rpartition(":")
    kinds = sorted({p.kind for p in registry.plugins() if p.name == bare}) or ["model"]  # else a namespace member
    for position, kind in enumerate(kinds):
        plugin = registry.get(kind, name)  # an unknown name raises, with suggestions
        factory = plugin.load()
        if position:
            click.echo()
        click.echo(f"{plugin.name}  ({plugin.kind}, from {plugin.provider} {plugin.version})")
        click.echo(f"target: {plugin.target}")
        click.echo("arguments:")
        parameters = list(inspect.signature(factory).parameters.values())
        if not parameters:
            click.echo("  (none)")
        for parameter in parameters:
            click.echo(f"  {_format_parameter(parameter)}")
        doc = inspect.getdoc(factory)
        if doc:
            click.echo()
            click.echo(doc)


def _format_parameter(parameter: inspect.Parameter) -> str:
    text = {inspect.Parameter.VAR_KEYWORD: "**", inspect.Parameter.VAR_POSITIONAL: "*"}.get(
        parameter.kind, ""
    ) + parameter.name
    if parameter.annotation is not inspect.Parameter.empty:
        annotation = parameter.annotation
        text += f": {annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)}"
    if parameter.default is not inspect.Parameter.empty:
        text += f" = {parameter.default!r}"
    return text


@cli.command()
def plugins() -> None:
    """List plugin distributions and their entry points, loading each to report any that fail."""
    results = registry.load_all()
    print_table(
        [
            (p.provider, p.version, p.kind, p.name, p.target, "ok" if error is None else "FAILED")
            for p, error in results
        ],
        ("PROVIDER", "VERSION", "KIND", "NAME", "TARGET", "STATUS"),
    )
    failed = [(plugin, error) for plugin, error in results if error is not None]
    if failed:
        click.echo(f"\n{len(failed)} plugin(s) failed to load and were skipped:")
        for plugin, error in failed:
            click.echo(f"  {plugin.qualified_name}: {error.__cause__!r}")


RECIPE_ARGUMENT = click.argument("recipe_path", metavar="RECIPE")
OVERRIDES_ARGUMENT = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")


@cli.command()
@RECIPE_ARGUMENT
@OVERRIDES_ARGUMENT
@click.option("--dry-run", is_flag=True, help="Build model, data and optimiser, print the parameter groups, stop.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars (default: on).")
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
    recipe_path: str, overrides: tuple[str, ...], dry_run: bool, progress: bool, resume: str | None, nproc: int
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

    from .config import recipe as recipes
    from .parallel.distributed import end_with_launcher, is_main, rank_left, teardown
    from .training.runner import latest_run
    from .training.runner import run as run_recipe

    end_with_launcher()  # a rank of torchrun: first of all, never outlive the launcher
    if resume and "=" in resume and not Path(resume).exists():  # `--resume train.epochs=5`: an override
        overrides, resume = (*overrides, resume), "latest"
    recipe = recipes.load(recipe_path, overrides)  # a mistake is reported once, before any process starts
    if nproc > 1 and not dry_run:
        flags = [*(["--resume", resume] if resume else []), *([] if progress else ["--no-progress"])]
        verbose = ["--verbose"] if click.get_current_context().find_root().params["verbose"] else []
        launch.torchrun(nproc, [*verbose, "run", recipe_path, *overrides, *flags])
        return
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
    if result.results.test:
        _print_scores(result.results.test)
    click.echo(f"run folder: {result.folder} ({result.results.state})")
    if result.results.state == "interrupted":
        sys.exit(130)


def _print_scores(metrics: dict[str, Any], split: str = "test") -> None:
    click.echo(
        f"{split}: accuracy {100 * metrics['accuracy']:.2f}%, precision {100 * metrics['precision']:.2f}%, "
        f"recall {100 * metrics['recall']:.2f}%, F1 {100 * metrics['f1']:.2f}%"
    )
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


@cli.command()
@RECIPE_ARGUMENT
@OVERRIDES_ARGUMENT
def show(recipe_path: str, overrides: tuple[str, ...]) -> None:
    """Print RECIPE fully resolved: bases merged, overrides applied, defaults filled in."""
    from .config import recipe as recipes

    click.echo(recipes.load(recipe_path, overrides).to_toml(), nl=False)


@cli.command()
def schema() -> None:
    """Print the recipe schema as JSON Schema (for TOML editors: completion and checks)."""
    from .config import recipe as recipes

    click.echo(json.dumps(recipes.json_schema(), indent=2))


@cli.command("eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("run_folder", metavar="RUN")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.pass_context
def eval_command(ctx: click.Context, run_folder: str, split: str, as_json: bool) -> None:
    """Evaluate a saved run again: accuracy, macro precision/recall/F1, per-class table.

    RUN is a run folder, or 'registry:NAME' or 'hf-hub:ORG/NAME[@REVISION]' (pulled first).

    Data settings can change with --data.KEY=VALUE, e.g. --data.root=/other/copy or
    --data.eval_batch_size=64; the classes must stay those the run was trained on.
    """

    from .inference.evaluate import evaluate_run
    from .sharing.hub import run_path

    metrics = evaluate_run(run_path(run_folder), split, _data_overrides(ctx, "RUN, --split, --json"))
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        _print_scores(metrics, split)


def _data_overrides(ctx: click.Context, takes: str) -> list[str]:
    """The --data.KEY=VALUE arguments a command passed through, as recipe overrides."""
    overrides = []
    for extra in ctx.args:
        if not extra.startswith("--data.") or "=" not in extra:
            raise ZooError(f"unexpected argument {extra!r}: `zoo {ctx.info_name}` takes {takes} and --data.KEY=VALUE")
        overrides.append(extra.removeprefix("--"))
    return overrides


@cli.command("export", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("run_folder", metavar="RUN", type=click.Path(path_type=Path))
@click.option(
    "--format", "format_", required=True, type=click.Choice(["onnx", "exported-program", "torchscript"]),
    help="onnx (onnxruntime and most runtimes), exported-program (torch.export, .pt2) or torchscript (deprecated).",
)  # fmt: skip
@click.option("--dynamic-batch", is_flag=True, help="Accept any batch size (default: a batch of one image).")
@click.option("--opset", type=click.IntRange(min=7), help="ONNX opset (default: the exporter's).")
@click.option(
    "--output", type=click.Path(path_type=Path),
    help="Where to write (default: RUN/model.onnx, .pt2, ...); never over a run's own files or through a link.",
)  # fmt: skip
@click.pass_context
def export_command(
    ctx: click.Context, run_folder: Path, format_: str, dynamic_batch: bool, opset: int | None, output: Path | None
) -> None:
    """Export a finished run's model for deployment, verified against PyTorch.

    The exported model runs (onnxruntime, the loaded program or script) on 64 images of the run's
    test split and is kept only if its logits match PyTorch's within 1e-3; the largest difference
    and the top-1 agreement are printed. The label names and preprocessing (input size, mean,
    std, interpolation, crop) go into the file: ONNX metadata props, or zoo.json in a .pt2 or
    TorchScript archive. ONNX needs `pip install 'zoo[export]'`. Data settings can change with
    --data.KEY=VALUE, as in `zoo eval`.
    """
    from .inference.export import export_run

    overrides = _data_overrides(ctx, "RUN, --format, --dynamic-batch, --opset, --output")
    exported = export_run(run_folder, format_, dynamic_batch, opset, output, overrides)
    click.echo(f"exported with {exported.exporter}")
    click.echo(
        f"verified on {exported.images} test images: max |logit difference| {exported.max_abs_diff:.2e}, "
        f"top-1 agreement {exported.top1_agreement:.1%}"
    )
    click.echo(f"wrote {exported.path}")


@cli.command()
@click.argument("run_folder", metavar="RUN")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(min=1), help="Labels shown per image.")
@click.option(
    "--backend", default="torch", show_default=True, type=click.Choice(["torch", "onnxruntime"]),
    help="torch: the run's weights; onnxruntime: its exported model.onnx (`zoo export RUN --format onnx`).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
def predict(run_folder: str, files: tuple[str, ...], top_k: int, backend: str, as_json: bool) -> None:
    """Predict the labels of image FILES (PNG, JPEG; any size, grayscale or colour) with a run.

    RUN is a run folder, or 'registry:NAME' or 'hf-hub:ORG/NAME[@REVISION]' (pulled first).

    Each image goes through the run's own preprocessing (its input size, mean and std). An
    unreadable file gets one line on stderr and the rest are still predicted; the exit code
    is then 2.
    """

    from .inference.predict import predict_files
    from .sharing.hub import run_path

    predictions, errors = predict_files(run_path(run_folder), [Path(f) for f in files], top_k, backend)
    if as_json:
        click.echo(json.dumps(predictions, indent=2))
    else:
        for prediction in predictions:
            ranked = ", ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in prediction["top"])
            click.echo(f"{prediction['file']}: {ranked}")
    for error in errors:
        click.echo(f"zoo: error: {error}", err=True)
    if errors:
        sys.exit(2)


@cli.command()
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

    from .config.recipe import differing_keys
    from .runs import table as run_folders

    folders = run_folders.find_runs([Path(p) for p in paths or ["runs"]])
    summaries = [run_folders.summary(folder) for folder in folders]
    if compare:
        if len(folders) < 2:
            raise ZooError("--compare needs at least two run folders")
        recipes = [folder.recipe.to_dict() for folder in folders]
        keys = [key for key in differing_keys(recipes) if key != "output.dir"]
        if as_json:
            table = {key: [run_folders.value_at(recipe, key) for recipe in recipes] for key in keys}
            click.echo(json.dumps({"runs": summaries, "differences": table}, indent=2))
            return
        rows = [(key, *(json.dumps(run_folders.value_at(r, key)) for r in recipes)) for key in keys]
        rows += [
            (metric, *(_cell(metric, s[metric]) for s in summaries))
            for metric in ("state", "kept", "best_val", "test_acc", "test_f1", "duration")
        ]
        print_table(rows, ("KEY", *(s["name"] for s in summaries)))
        return
    summaries.sort(key=lambda s: (s[sort_by] is None, s[sort_by]), reverse=sort_by in ("best_val", "test_acc"))
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
        return
    rows = [tuple(_cell(column, s[column]) for column in run_folders.COLUMNS) for s in summaries]
    print_table(rows, [column.upper() for column in run_folders.COLUMNS])


@cli.command()
@click.argument("run_folder", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--repo", required=True, metavar="ORG/NAME", help="The Hub model repo (created if it does not exist).")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--revision", metavar="BRANCH", help="Push to this branch (created from main if needed); default main.")
@click.option("--message", metavar="TEXT", help="The commit message.")
def push(run_folder: Path, repo: str, private: bool, revision: str | None, message: str | None) -> None:
    """Upload a finished run folder to the Hugging Face Hub.

    Pushes model.safetensors, config.json, the README.md model card, recipe.toml, results.json
    and the plots; prints the repo URL and the commit. Weights holding NaN or infinity, and an
    export made from other weights, are refused before anything is sent. The token comes from
    HF_TOKEN or `hf auth login`; zoo never prints or stores it. Afterwards `zoo registry add RUN
    --name NAME` pins this commit in registry.json.
    """
    from .sharing.hub import push as push_run

    pushed = push_run(run_folder, repo, private=private, revision=revision, message=message)
    click.echo(f"pushed {run_folder} to {pushed.url}")
    click.echo(f"commit {pushed.commit}")


@cli.command()
@click.argument("run_folder", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--repo", required=True, metavar="ORG/NAME", help="The Hub model repo (created if it does not exist).")
@click.option("--name", required=True, help="The registry.json name the weights go by.")
@click.option("--replace", is_flag=True, help="Repoint a name that registry.json already has.")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option(
    "--recipe", "recipe_path", type=click.Path(path_type=Path), help="The recipe that produces them (a second source)."
)
def publish(run_folder: Path, repo: str, name: str, replace: bool, private: bool, recipe_path: Path | None) -> None:
    """Push a finished run and pin it in registry.json under NAME, in one step.

    The pin (commit, sha256 and size of every file) is read back from the Hub after the push:
    the commit's files are downloaded afresh and must be exactly what was pushed. A NAME that
    registry.json already has is refused before anything is pushed, unless --replace.
    """
    from .sharing import registry as catalog
    from .sharing.hub import publish as publish_run

    pushed, hub = publish_run(run_folder, repo, name, replace=replace, private=private, recipe=recipe_path)
    click.echo(f"pushed {run_folder} to {pushed.url}")
    click.echo(f"{catalog.path()}: {name} -> {hub.repo}@{hub.revision}, {len(hub.files)} files read back and pinned")


@cli.command()
@click.argument("spec", metavar="ORG/NAME[@REVISION] | NAME")
def pull(spec: str) -> None:
    """Download weights into the Hugging Face cache and print their folder.

    A registry NAME (or 'registry:NAME') resolves to its pinned commit, and every pinned file
    must match its sha256. The folder works as `model.pretrained` in a recipe (as does
    'hf-hub:ORG/NAME[@REVISION]' directly); with HF_HUB_OFFLINE=1 it comes from the cache.
    """
    from .config.sources import HUB_PREFIX, REGISTRY_PREFIX, names_remote
    from .sharing.hub import run_path

    if not names_remote(spec):  # written bare: ORG/NAME[@REVISION] on the Hub, or a registry NAME
        spec = (HUB_PREFIX if "/" in spec.split("@")[0] else REGISTRY_PREFIX) + spec
    click.echo(run_path(spec))


@cli.group("registry")
def registry_group() -> None:
    """registry.json, the catalogue of named weights ($ZOO_REGISTRY, comma-separated, else ./registry.json)."""


@registry_group.command("list")
@click.option("--backbone", metavar="PATTERN", help="Only weights whose backbone matches, e.g. 'timm/resnet*'.")
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON.")
def registry_list(backbone: str | None, as_json: bool) -> None:
    """The named weights of every registry on the search list, and the registry each comes from.

    ZOO_REGISTRY may name several, comma-separated: local files and 'hf-hub:ORG/REPO[@COMMIT]'
    (a team's registry.json on the Hub); the first that names a weight decides it.
    """
    from fnmatch import fnmatchcase

    from .sharing import registry as catalog

    found = {
        name: item
        for name, item in sorted(catalog.everything().items())
        if backbone is None or fnmatchcase(item.entry.backbone, backbone)
    }
    if as_json:
        listed = {
            name: {**item.entry.model_dump(exclude_none=True), "origin": item.origin.label}
            for name, item in found.items()
        }
        click.echo(json.dumps(listed, indent=2))
        return
    rows = []
    for name, item in found.items():
        entry, hub = item.entry, item.entry.sources.hub
        sources = ", ".join(
            filter(
                None,
                [hub and f"{hub.repo}@{hub.revision[:12]}", entry.sources.recipe and f"recipe:{entry.sources.recipe}"],
            )
        )
        accuracy = f"{100 * entry.metrics['accuracy']:.2f}%" if "accuracy" in entry.metrics else "-"
        rows.append((name, entry.backbone, str(entry.num_classes), accuracy, sources, item.origin.label))
    print_table(rows, ("NAME", "BACKBONE", "CLASSES", "ACCURACY", "SOURCES", "REGISTRY"))


@registry_group.command("add")
@click.argument("run_folder", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="The name the weights go by.")
@click.option(
    "--recipe", "recipe_path", type=click.Path(path_type=Path), help="The recipe that produces them (a second source)."
)
def registry_add(run_folder: Path, name: str, recipe_path: Path | None) -> None:
    """Record RUN's weights: the commit of its last `zoo push`, the sha256 and size of its weights."""
    from .runs.folder import RunFolder
    from .sharing import registry as catalog

    entry = catalog.add(run_folder, name, recipe_path)
    hub = entry.sources.hub
    weights = hub.files[RunFolder.WEIGHTS].sha256 if hub else ""
    pinned = f"{hub.repo}@{hub.revision}, {len(hub.files)} files, weights sha256 {weights}" if hub else ""
    pinned = pinned or f"recipe:{entry.sources.recipe}"
    click.echo(f"{catalog.path()}: {name} -> {pinned}")


@registry_group.command("check")
def registry_check() -> None:
    """Validate every registry on the search list: schema, full commit hashes, sha256s, label counts, recipe files."""
    from .sharing import registry as catalog

    for origin in catalog.origins():
        checked = catalog.check(origin.file)
        click.echo(f"{origin.label}: {len(checked.weights)} named weights, valid")


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column in ("best_val", "test_acc", "test_f1"):
        return f"{100 * value:.2f}%"
    if column == "duration":
        return f"{int(value // 60)}m{value % 60:04.1f}s"
    return str(value)


def main() -> None:
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        cli(prog_name="zoo")
        return
    # A rank of torchrun, its process group already torn down: gloo's C++ threads can still abort
    # the interpreter's finalisation now and then ("terminate called without an active exception",
    # SIGABRT, after a run that went well). The rank leaves through os._exit once its output is
    # flushed, with the exit code (and the traceback, if any) it would have had.
    try:
        cli(prog_name="zoo")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
