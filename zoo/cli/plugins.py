"""``zoo list``, ``zoo info`` and ``zoo plugins``: what plugins are installed, and what they take."""

from __future__ import annotations

import inspect
import json

import click

from ..errors import ZooError
from ..plugins import _registry as registry
from .group import print_table

KIND_CHOICES = {"models": "model", "datasets": "dataset", "losses": "loss", "loggers": "logger"}


@click.command("list")
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


@click.command()
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


@click.command()
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
            cause = error.__cause__  # what the import raised; a target that is not a usable factory has none
            click.echo(f"  {plugin.qualified_name}: {error if cause is None else repr(cause)}")
