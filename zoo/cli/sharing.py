"""``zoo push``, ``zoo publish``, ``zoo pull`` and ``zoo registry``: weights shared through the Hub and registry.json."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .group import print_table

ADAPTER_ONLY = (
    "An adapter run (model.adapter) without its merged model.safetensors and exports: a pull fetches the base "
    "its config.json pins, checks every file's sha256 and applies the adapter."
)


@click.command()
@click.argument("run_folder", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--repo", required=True, metavar="ORG/NAME", help="The Hub model repo (created if it does not exist).")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--revision", metavar="BRANCH", help="Push to this branch (created from main if needed); default main.")
@click.option("--message", metavar="TEXT", help="The commit message.")
@click.option("--adapter-only", is_flag=True, help=ADAPTER_ONLY)
def push(
    run_folder: Path, repo: str, private: bool, revision: str | None, message: str | None, adapter_only: bool
) -> None:
    """Upload a finished run folder to the Hugging Face Hub.

    Pushes model.safetensors, config.json, the README.md model card, recipe.toml, results.json
    and the plots (and an adapter run's adapter_config.json and adapter_model.safetensors); prints
    the repo URL and the commit. Weights holding NaN or infinity, and an export made from other
    weights, are refused before anything is sent. The token comes from HF_TOKEN or `hf auth
    login`; zoo never prints or stores it. Afterwards `zoo registry add RUN --name NAME` pins this
    commit in registry.json.
    """
    from ..sharing.hub import push as push_run

    pushed = push_run(run_folder, repo, private=private, revision=revision, message=message, adapter_only=adapter_only)
    click.echo(f"pushed {run_folder} to {pushed.url}")
    click.echo(f"commit {pushed.commit}")


@click.command()
@click.argument("run_folder", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--repo", required=True, metavar="ORG/NAME", help="The Hub model repo (created if it does not exist).")
@click.option("--name", required=True, help="The registry.json name the weights go by.")
@click.option("--replace", is_flag=True, help="Repoint a name that registry.json already has.")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option(
    "--recipe", "recipe_path", type=click.Path(path_type=Path), help="The recipe that produces them (a second source)."
)
@click.option("--adapter-only", is_flag=True, help=ADAPTER_ONLY)
def publish(
    run_folder: Path, repo: str, name: str, replace: bool, private: bool, recipe_path: Path | None, adapter_only: bool
) -> None:
    """Push a finished run and pin it in registry.json under NAME, in one step.

    The pin (commit, sha256 and size of every file) is read back from the Hub after the push:
    the commit's files are downloaded afresh and must be exactly what was pushed; an adapter
    run's pin holds its base's too (source, sha256 of every file). A NAME that registry.json
    already has is refused before anything is pushed, unless --replace.
    """
    from ..sharing import registry as catalog
    from ..sharing.hub import publish as publish_run

    pushed, hub = publish_run(run_folder, repo, name, replace=replace, private=private, recipe=recipe_path,
                              adapter_only=adapter_only)  # fmt: skip
    click.echo(f"pushed {run_folder} to {pushed.url}")
    click.echo(f"{catalog.path()}: {name} -> {hub.repo}@{hub.revision}, {len(hub.files)} files read back and pinned")


@click.command()
@click.argument("spec", metavar="ORG/NAME[@REVISION] | NAME")
def pull(spec: str) -> None:
    """Download weights into the Hugging Face cache and print their folder.

    A registry NAME (or 'registry:NAME') resolves to its pinned commit, and every pinned file
    must match its sha256. The folder works as `model.pretrained` in a recipe (as does
    'hf-hub:ORG/NAME[@REVISION]' directly); with HF_HUB_OFFLINE=1 it comes from the cache. An
    adapter pushed alone is applied to the base it pins (fetched and checked): the folder printed
    is then the merged run, under $ZOO_CACHE_DIR/adapted.
    """
    from ..config.sources import HUB_PREFIX, REGISTRY_PREFIX, names_remote
    from ..sharing.resolve import local_run_folder

    if not names_remote(spec):  # written bare: ORG/NAME[@REVISION] on the Hub, or a registry NAME
        spec = (HUB_PREFIX if "/" in spec.split("@")[0] else REGISTRY_PREFIX) + spec
    click.echo(local_run_folder(spec))


@click.group("registry")
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

    from ..sharing import registry as catalog

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
@click.option("--replace", is_flag=True, help="Repoint a name that registry.json already has.")
def registry_add(run_folder: Path, name: str, recipe_path: Path | None, replace: bool) -> None:
    """Record RUN's weights: the commit of its last `zoo push`, the sha256 and size of its weights.

    A NAME that registry.json already has is refused, unless --replace.
    """
    from ..runs.folder import RunFolder
    from ..sharing import registry as catalog

    entry = catalog.add(run_folder, name, recipe_path, replace=replace)
    hub = entry.sources.hub
    pinned = ""
    if hub is not None:  # an adapter pushed alone: its weights are the adapter's, on the base it pins
        shared = RunFolder.WEIGHTS if RunFolder.WEIGHTS in hub.files else RunFolder.ADAPTER_WEIGHTS
        pinned = f"{hub.repo}@{hub.revision}, {len(hub.files)} files, {shared} sha256 {hub.files[shared].sha256}"
        pinned += f", base {hub.base.source}" if hub.base is not None else ""
    pinned = pinned or f"recipe:{entry.sources.recipe}"
    click.echo(f"{catalog.path()}: {name} -> {pinned}")


@registry_group.command("check")
def registry_check() -> None:
    """Validate every registry on the search list: schema, full commit hashes, sha256s, label counts, recipe files."""
    from ..sharing import registry as catalog

    for origin in catalog.origins():
        checked = catalog.check(origin.file, origin.local)
        click.echo(f"{origin.label}: {len(checked.weights)} named weights, valid")
