"""Where a recipe's pretrained weights come from: ``model.pretrained`` parsed once, into a type.

``model.pretrained`` is written in a recipe as ``false``, ``true``, a folder, ``recipe:FILE.toml``,
``hf-hub:ORG/REPO[@REVISION]`` or ``registry:NAME``. ``parse`` turns it into one of the small frozen types below
when the recipe loads (relative paths against the recipe's folder); everything downstream
matches on the type and reads its fields, and ``text`` writes it back for the resolved recipe.
This module is the only place that knows the prefixes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RECIPE_PREFIX = "recipe:"
HUB_PREFIX = "hf-hub:"
# A prefix, like the others, rather than a bare name: a bare word is a folder in the current one,
# and a name in registry.json must never be mistaken for a folder of the same name (or the reverse).
REGISTRY_PREFIX = "registry:"
# A registry.json name: a name, not a path (no '/', no '..', no spaces).
REGISTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# The Hub's repo ids: ORG/NAME of letters, digits, '-', '_' and '.', not starting or ending with '-' or '.'.
HUB_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


@dataclass(frozen=True)
class Scratch:
    """``false``: randomly initialised weights."""


@dataclass(frozen=True)
class PluginWeights:
    """``true``: the model plugin's own pretrained weights (timm's default tag, for timm models)."""


@dataclass(frozen=True)
class LocalFolder:
    """A folder of weights: a zoo run folder, or a timm model folder (config.json + model.safetensors)."""

    path: Path


@dataclass(frozen=True)
class RecipeOutput:
    """``recipe:FILE.toml``: the weights that recipe trains, built once and cached."""

    path: Path


@dataclass(frozen=True)
class HubRepo:
    """``hf-hub:ORG/NAME[@REVISION]``: a model repo on the Hugging Face Hub."""

    repo: str
    revision: str | None = None

    @property
    def spec(self) -> str:
        """``ORG/NAME[@REVISION]``, as `zoo pull` takes it."""
        return f"{self.repo}@{self.revision}" if self.revision else self.repo


@dataclass(frozen=True)
class RegistryName:
    """``registry:NAME``: named weights in registry.json, pinned to a Hub commit and every file's sha256
    (or to the recipe that trains them)."""

    name: str


WeightSource = Scratch | PluginWeights | LocalFolder | RecipeOutput | HubRepo | RegistryName


def parse(value: bool | str | WeightSource, base: Path) -> WeightSource:
    """The source ``value`` names; relative paths are relative to ``base``. A ValueError says what is wrong."""
    if isinstance(value, Scratch | PluginWeights | LocalFolder | RecipeOutput | HubRepo | RegistryName):
        return value
    if isinstance(value, bool):
        return PluginWeights() if value else Scratch()
    if not isinstance(value, str):
        raise ValueError(f"must be true, false or a string naming the weights, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(
            "is empty: write false, true, a run folder, 'recipe:FILE.toml', 'hf-hub:ORG/NAME' or 'registry:NAME'"
        )
    if value.startswith(RECIPE_PREFIX):
        return RecipeOutput(recipe_path(base / value.removeprefix(RECIPE_PREFIX)))
    if value.startswith(HUB_PREFIX):
        return parse_hub_spec(value.removeprefix(HUB_PREFIX))
    if value.startswith(REGISTRY_PREFIX):
        name = value.removeprefix(REGISTRY_PREFIX)
        if not REGISTRY_NAME.fullmatch(name):
            raise ValueError(f"'{name}' is not a registry.json name (`zoo registry list` shows them)")
        return RegistryName(name)
    return LocalFolder((base / value).resolve())


def recipe_path(path: Path) -> Path:
    """The absolute name of the recipe file at ``path``: its folder's links resolved, not the file's own.

    A recipe's relative paths start beside the name it was given, so that the recipes of a Hub
    snapshot (each a link into the cache's ``blobs/``) find each other as they lie in their repo.
    """
    path = Path.cwd() / path  # not normalised: "link/.." is the link's target's parent, as the system reads it
    return path.parent.resolve() / path.name


def names_remote(text: str) -> bool:
    """Whether ``text`` names weights on the Hub or in a registry (by its prefix) rather than a folder."""
    return text.startswith((HUB_PREFIX, REGISTRY_PREFIX))


def parse_hub_spec(spec: str) -> HubRepo:
    """``ORG/NAME[@REVISION]`` as a HubRepo; a ValueError when it is not a valid Hub repo id."""
    repo, at, revision = spec.partition("@")
    if not HUB_REPO.fullmatch(repo) or ".." in repo or (at and not revision.strip()):
        raise ValueError(f"'{spec}' is not a Hub repo: write ORG/NAME or ORG/NAME@REVISION")
    return HubRepo(repo, revision or None)


def text(source: WeightSource) -> bool | str:
    """How the resolved recipe writes ``source`` (absolute paths)."""
    match source:
        case Scratch():
            return False
        case PluginWeights():
            return True
        case LocalFolder(path):
            return str(path)
        case RecipeOutput(path):
            return RECIPE_PREFIX + str(path)
        case HubRepo():
            return HUB_PREFIX + source.spec
        case RegistryName(name):
            return REGISTRY_PREFIX + name
    raise TypeError(f"not a weight source: {source!r}")
