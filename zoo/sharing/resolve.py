"""Where weights come from, made local: the one resolver of weight sources.

A recipe's ``model.pretrained`` (zoo/config/sources.py) and a command's RUN argument name weights
in several ways; this module turns each into files on this machine before anything loads them:

- ``hf-hub:ORG/NAME[@REVISION]``: pulled into the Hugging Face cache (the pinned files checked,
  where a registry.json name pins that commit);
- ``registry:NAME``: its pinned Hub commit pulled and every file's sha256 checked, or, for a name
  with only a recipe, that recipe's output;
- either of those holding an adapter alone (``zoo push --adapter-only``): its pinned base resolved
  here too, checked, and the adapter merged into it (zoo/sharing/adapted.py);
- ``recipe:FILE.toml``: the folder the recipe trains. Training is a higher layer than sharing,
  so the caller passes it in (``train_recipe``); a caller that cannot train refuses the source;
- a folder, ``true`` and ``false``: unchanged (the model builder checks a folder's files).

huggingface_hub is imported only when weights come from the Hub or a registry.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from ..config.sources import (
    HUB_PREFIX,
    RECIPE_PREFIX,
    REGISTRY_PREFIX,
    HubRepo,
    LocalFolder,
    PluginWeights,
    RecipeOutput,
    RegistryName,
    Scratch,
    WeightSource,
    names_remote,
    parse,
)
from ..errors import ZooError
from ..models.adapters import BasePin
from ..parallel import distributed
from . import adapted

# A recipe file -> the folder of the run it trains, or None where it is not trained (a dry run).
RecipeTrainer = Callable[[Path], Path | None]
# What the model builder takes: weights on this machine, or none to fetch.
Resolved = Scratch | PluginWeights | LocalFolder


def resolve(source: WeightSource, *, train_recipe: RecipeTrainer | None = None) -> Resolved:
    """``source`` as local files: pulled and checked from the Hub, or trained by ``train_recipe``
    (a ``recipe:`` source, or a registry name with only a recipe, untrained where it gives None: Scratch).

    Without ``train_recipe`` such a source is refused in one line."""
    if isinstance(source, RegistryName) and train_recipe is not None:
        from . import registry as catalog

        found = catalog.find(source.name)
        if found.entry.sources.hub is None:  # only a recipe: its output (pull says so, where none can train)
            assert found.recipe is not None, "a registry entry has a hub source, a recipe or both"
            source = RecipeOutput(found.recipe)
    if isinstance(source, HubRepo | RegistryName):
        from .hub import pull

        folder = distributed.agreed(partial(pull, source))  # each node pulls and checks
        if adapted.is_adapter_only(folder):  # the adapter alone: its pinned base fetched, checked, merged
            whole = partial(adapted.made_whole, folder, _label(source), _base_folder, _registry_base(source))
            folder = distributed.agreed(whole)
        return LocalFolder(folder)
    if isinstance(source, RecipeOutput):
        if train_recipe is None:
            raise ZooError(
                f"{RECIPE_PREFIX}{source.path} names weights that a recipe trains, and only `zoo run` trains: "
                "train it, then give its run folder"
            )
        trained = train_recipe(source.path)
        return LocalFolder(trained) if trained is not None else Scratch()
    return source


def local_run_folder(run: str | Path) -> Path:
    """A RUN argument (of a command, or of ``zoo.load``) as a folder: a run folder as given (an adapter-only
    one made whole from its pinned base), or
    'registry:NAME' / 'hf-hub:ORG/NAME[@REVISION]' pulled (a registry name at its pinned commit,
    every pinned file checked). A ``recipe:`` source is refused: reading a run never trains one."""
    if isinstance(run, Path) or not (names_remote(run) or run.startswith(RECIPE_PREFIX)):
        folder = Path(run)
        if adapted.is_adapter_only(folder):  # an adapter pulled or copied alone: merged onto its pinned base
            return adapted.made_whole(folder, str(folder), _base_folder)
        return folder
    try:
        source = parse(run, Path.cwd())
    except ValueError as exc:
        raise ZooError(f"{run}: {exc}") from None
    resolved = resolve(source)
    assert isinstance(resolved, LocalFolder), "a Hub repo or registry name resolves to a pulled folder"
    return resolved.path


def _label(source: HubRepo | RegistryName) -> str:
    return f"{REGISTRY_PREFIX}{source.name}" if isinstance(source, RegistryName) else f"{HUB_PREFIX}{source.spec}"


def _registry_base(source: HubRepo | RegistryName) -> BasePin | None:
    """A registry name's pin of the base its adapter adapts, if it has one."""
    if not isinstance(source, RegistryName):
        return None
    from . import registry as catalog

    hub = catalog.entry(source.name).sources.hub
    return hub.base if hub is not None else None


def _base_folder(pinned: str) -> Path:
    """The local folder of an adapter's base as its pin names it: a Hub commit pulled (and checked, where
    registry.json pins it), or a folder on this machine."""
    try:
        source = parse(pinned, Path.cwd())
    except ValueError as exc:
        raise ZooError(f"the adapter's base {pinned}: {exc}") from None
    resolved = resolve(source)
    if not isinstance(resolved, LocalFolder) or not resolved.path.is_dir():
        raise ZooError(
            f"the adapter's base {pinned} is not on this machine: copy that folder here, or train the adapter on "
            "weights from the Hub (model.pretrained = 'hf-hub:ORG/NAME' or 'registry:NAME') and push it again"
        )
    return resolved.path
