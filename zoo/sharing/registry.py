"""registry.json: the catalogue of named weights, each pinned to a Hub commit and the sha256 of every file.

A name resolves to an exact commit (never a moving branch) and the hash and size of each file
a pull fetches (weights, config.json, recipe, card, results, plots), and/or to the recipe that
produces the weights. An adapter run's entry pins its base as well (``base``: source and the sha256
of every base file), and one shared without merged weights pins peft's files in their place. Changes are read-modify-write under a lock, so concurrent ``zoo registry add``
and ``zoo publish`` lose nothing.

Where zoo looks: ``$ZOO_REGISTRY``, a comma-separated list of registries searched in order (the
first that names a weight decides it), else ``registry.json`` in the current folder. An entry
is a local file or ``hf-hub:ORG/REPO[@COMMIT]``, a team's registry.json in a Hub model repo,
pulled at that commit (or the latest) with the recipes beside it. Writes go to the first local
file.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import _files
from .. import _locking as locking
from ..config import recipe as recipes
from ..config.sources import HUB_PREFIX, HUB_REPO, REGISTRY_NAME, HubRepo, parse_hub_spec, recipe_path
from ..errors import ZooError, did_you_mean
from ..models.adapters import BasePin, base_pin_of
from ..runs.folder import FilePin, HubRecord, RunFolder
from .hub_api import pull_registry

SCHEMA_VERSION = 2  # 2: every pulled file pinned (1 pinned model.safetensors only)
ADAPTER_FILES = (RunFolder.ADAPTER_CONFIG, RunFolder.ADAPTER_WEIGHTS)
NAME_PATTERN = f"^{REGISTRY_NAME.pattern}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class HubSource(_Strict):
    repo: str = Field(pattern=f"^{HUB_REPO.pattern}$", description="ORG/NAME on the Hub")
    revision: str = Field(pattern=r"^[0-9a-f]{40}$", description="the full commit hash the name is pinned to")
    files: dict[str, FilePin] = Field(description="every file a pull fetches, with its sha256 and size")
    base: BasePin | None = Field(None, description="an adapter run's base weights: their source and every file's pin")

    @model_validator(mode="after")
    def _pins_the_run_files(self) -> HubSource:
        if ".." in self.repo:
            raise ValueError(f"repo {self.repo!r} is not a Hub repo id")
        unknown = sorted(set(self.files) - set(RunFolder.SHARED))
        if unknown:
            raise ValueError(f"files: {unknown[0]!r} is not a run-folder file zoo pulls")
        # An adapter shared alone (zoo push --adapter-only) is pinned with its base instead of merged weights.
        weights = (RunFolder.WEIGHTS,) if self.base is None or RunFolder.WEIGHTS in self.files else ADAPTER_FILES
        missing = [name for name in (*weights, RunFolder.CONFIG) if name not in self.files]
        if missing:
            raise ValueError(f"files must pin {missing[0]}")
        return self


class Sources(_Strict):
    hub: HubSource | None = None
    recipe: str | None = Field(None, description="the recipe that produces the weights, relative to registry.json")

    @field_validator("recipe")
    @classmethod
    def _a_path(cls, recipe: str | None) -> str | None:
        if recipe is not None and "\0" in recipe:
            raise ValueError(f"{recipe!r} holds a NUL byte (\\0), which no path may hold")
        return recipe

    @model_validator(mode="after")
    def _at_least_one(self) -> Sources:
        if self.hub is None and self.recipe is None:
            raise ValueError("sources needs 'hub', 'recipe' or both")
        return self


class Entry(_Strict):
    backbone: str
    num_classes: int = Field(ge=1)
    label_names: list[str]
    sources: Sources
    metrics: dict[str, float] = {}
    license: str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _labels_fit(self) -> Entry:
        if len(self.label_names) != self.num_classes:
            raise ValueError(f"label_names has {len(self.label_names)} names for num_classes = {self.num_classes}")
        return self


class Catalog(_Strict):
    schema_version: int = Field(alias="schema")
    weights: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Entry] = {}

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


@dataclass(frozen=True)
class Origin:
    """One registry on the search list: where its file is, and how ``zoo registry list`` names it."""

    file: Path  # for a Hub registry, the pulled copy
    label: str
    local: bool


def search_list() -> list[str]:
    """The registries ``$ZOO_REGISTRY`` names, in order (default: ./registry.json)."""
    entries = [entry.strip() for entry in os.environ.get("ZOO_REGISTRY", "").split(",") if entry.strip()]
    return entries or ["registry.json"]


def path() -> Path:
    """The registry zoo writes to: the first local file on the search list."""
    local = [entry for entry in search_list() if not entry.startswith(HUB_PREFIX)]
    if not local:
        raise ZooError(
            "ZOO_REGISTRY names only Hub registries, which zoo reads but does not write: "
            "put a local file first, e.g. ZOO_REGISTRY=registry.json,hf-hub:ORG/REPO"
        )
    return Path(local[0])


def origins() -> list[Origin]:
    """Every registry on the search list, Hub registries pulled (at their pinned commit, else the latest)."""
    return [_hub_origin(entry) if entry.startswith(HUB_PREFIX) else Origin(Path(entry), entry, local=True)
            for entry in search_list()]  # fmt: skip


@functools.cache  # once per process: a command looks names up several times, a run once per node
def _hub_origin(entry: str) -> Origin:
    try:
        source = parse_hub_spec(entry.removeprefix(HUB_PREFIX))
    except ValueError as exc:
        raise ZooError(f"ZOO_REGISTRY: {exc}") from None
    file = pull_registry(source)
    return Origin(file, f"{HUB_PREFIX}{source.repo}@{file.parent.name[:12]}", local=False)


@dataclass(frozen=True)
class Found:
    name: str
    entry: Entry
    origin: Origin

    @property
    def recipe(self) -> Path | None:
        """The recipe source, which registry.json gives relative to itself."""
        recipe = self.entry.sources.recipe
        if recipe is None:
            return None
        return recipe_source(self.origin.file, f"weights.{self.name}.sources.recipe", recipe, self.origin.local)


def recipes_folder(file: Path, local: bool = True) -> Path:
    """Where a registry's recipe paths start: beside the file that a local link points to (the file
    ``add`` writes through, whose paths must hold for every link to it), beside a pulled Hub registry."""
    return file.resolve().parent if local else file.parent


def recipe_source(file: Path, key: str, recipe: str, local: bool = True) -> Path:
    """The recipe file that the registry at ``file`` names ``recipe`` (at ``key``). A Hub registry's must be a
    file of its repo: nothing outside the pulled snapshot is pinned, and it differs from machine to machine."""
    if not local and (os.path.isabs(recipe) or Path(os.path.normpath(recipe)).parts[:1] == ("..",)):
        raise ZooError(f"{file}: {key}: {recipe} is not in the registry's Hub repo: name a recipe file of that repo")
    return recipe_path(recipes_folder(file, local) / recipe)


def everything() -> dict[str, Found]:
    """Every name on the search list with the registry it comes from; the first registry naming it wins."""
    found: dict[str, Found] = {}
    for origin in origins():
        for name, entry in load(origin.file).weights.items():
            found.setdefault(name, Found(name, entry, origin))
    return found


def load(file: Path | None = None) -> Catalog:
    """The catalogue at ``file`` (default: ``path()``), validated; an empty one if there is no file."""
    file = file or path()
    text = _files.read_file(file)  # a regular file of bounded size: never a FIFO, a device or a folder
    if text is None:
        if os.environ.get("ZOO_REGISTRY") and str(file) in search_list():
            raise ZooError(f"ZOO_REGISTRY names {file}, which does not exist")
        return Catalog(schema=SCHEMA_VERSION)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ZooError(f"{file}: not valid JSON: {exc}") from None
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function"))
        raise ZooError(f"{file}: {key}: {str(error['msg']).removeprefix('Value error, ')}") from None
    if catalog.schema_version != SCHEMA_VERSION:
        raise ZooError(
            f"{file}: schema {catalog.schema_version} is not supported (this zoo reads schema {SCHEMA_VERSION})"
        )
    return catalog


def check(file: Path | None = None, local: bool = True) -> Catalog:
    """``load`` plus what the schema cannot see: recipe sources exist and read as recipes (bases included)."""
    file = file or path()
    catalog = load(file)
    for name, entry in catalog.weights.items():
        if entry.sources.recipe is None:
            continue
        recipe = recipe_source(file, f"weights.{name}.sources.recipe", entry.sources.recipe, local)
        if not recipe.is_file():
            raise ZooError(f"{file}: weights.{name}.sources.recipe: {entry.sources.recipe} not found (relative to "
                           f"{recipes_folder(file, local)})")  # fmt: skip
        try:
            recipes.load(recipe, check=False)  # plugins are the running zoo's, not the file's
        except ZooError as exc:
            raise ZooError(f"{file}: weights.{name}.sources.recipe: {exc}") from None
    return catalog


def find(name: str) -> Found:
    """The weights ``name`` stands for, from the first registry on the search list that names it."""
    found = everything()
    if name not in found:
        hint = did_you_mean(name, sorted(found)) or f" (they name: {', '.join(sorted(found)) or 'nothing yet'})"
        raise ZooError(f"no weights named '{name}' in {', '.join(search_list())}{hint}")
    return found[name]


def entry(name: str) -> Entry:
    return find(name).entry


def check_addable(name: str, recipe: Path | None = None, replace: bool = False, file: Path | None = None) -> None:
    """What ``add`` refuses, checked before anything changes (``zoo publish`` checks it before it pushes):
    ``name`` is a name, not yet taken unless ``replace``, ``recipe`` is a file, and the registry zoo
    writes to is a local file that holds a valid catalogue (or none yet)."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ZooError(
            f"--name {name!r}: a name is letters, digits, '.', '_' and '-' (not a path), like mnist_cnn.digits"
        )
    if recipe is not None and not recipe.is_file():
        raise ZooError(f"--recipe {recipe}: no such recipe file")
    file = file or path()
    taken = name in load(file).weights  # loaded with --replace too: a damaged registry is refused now
    if taken and not replace:
        raise ZooError(f"{file} already names '{name}': choose another name, or give --replace to repoint it")


def add(
    run: Path,
    name: str,
    recipe: Path | None = None,
    file: Path | None = None,
    hub: HubSource | None = None,
    replace: bool = False,
) -> Entry:
    """Record the run folder's weights under ``name``: ``hub`` (default: its last ``zoo push``) and/or ``recipe``.
    A name the registry already has is refused unless ``replace``."""
    file = file or path()
    check_addable(name, recipe, replace, file)  # a damaged registry is refused before a lock is made beside it
    folder = RunFolder.existing(run)
    pushed = folder.hub_record
    if hub is None and pushed is None and recipe is None:
        raise ZooError(
            f"{run} was never pushed (no {RunFolder.HUB_RECORD}): `zoo push {run} --repo ORG/NAME` first, or give --recipe"
        )
    if hub is None and pushed is not None:
        hub = _hub_source(folder, pushed)
    results = folder.results
    test = (results.test if results else None) or {}
    stored = folder.recipe
    new = Entry(
        backbone=stored.model.backbone,
        num_classes=len(folder.label_names),
        label_names=folder.label_names,
        sources=Sources(hub=hub, recipe=os.path.relpath(recipe_path(recipe), recipes_folder(file)) if recipe else None),
        metrics={key: float(test[key]) for key in ("accuracy", "precision", "recall", "f1") if key in test},
        license=stored.license,
        description=stored.description,
    )
    target = file.resolve()  # a symlinked registry.json is written through, not replaced
    with locking.locked(target):
        catalog = load(file)
        if not replace and name in catalog.weights:  # taken since the caller checked
            raise ZooError(f"{file} already names '{name}': choose another name, or give --replace to repoint it")
        catalog.weights[name] = new
        _files.write_json(target, catalog.model_dump(by_alias=True, exclude_none=True))
    return new


def _hub_source(folder: RunFolder, pushed: HubRecord) -> HubSource:
    """The pin for what `zoo push` uploaded, once the run folder is checked to still hold those files."""
    if not pushed.files:
        raise ZooError(f"{folder} was pushed by an older zoo that recorded no file hashes: push it again")
    for name, pin in pushed.files.items():
        local = folder.file(name)
        if name != RunFolder.RECIPE and (not local.is_file() or _files.sha256_of(local) != pin.sha256):
            raise ZooError(
                f"{local} is not what commit {pushed.commit[:12]} of {pushed.repo} holds (the run changed after "
                f"`zoo push`): push it again, then add it"
            )
    return HubSource(repo=pushed.repo, revision=pushed.commit, files=pushed.files, base=base_pin_of(folder))


def pins_of(source: HubRepo) -> dict[str, FilePin] | None:
    """The file pins of the registry.json name pinned to exactly ``source``'s repo and commit, if any:
    an ``hf-hub:ORG/NAME@COMMIT`` source is then checked as that name would be."""
    for found in everything().values():
        hub = found.entry.sources.hub
        if hub is not None and (hub.repo, hub.revision) == (source.repo, source.revision):
            return hub.files
    return None
