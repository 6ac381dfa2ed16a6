"""Recipes: TOML files that declare a fine-tuning run, read and checked against the schema.

A recipe is read top to bottom: ``extends`` merges a base recipe underneath, command-line
overrides (``train.epochs=1``) go on top, relative paths are taken relative to the file that
wrote them, and the result is checked against ``Recipe`` (zoo/config/schema.py, the schema
``zoo schema`` prints) before anything runs. Every mistake becomes a one-line ZooError naming the
file and the key.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ZooError, did_you_mean
from ..plugins import _registry as registry
from . import sources
from .schema import Recipe


def load(path: str | Path, overrides: Iterable[str] = (), check: bool = True) -> Recipe:
    """Read, merge, override and validate the recipe at ``path``.

    ``check`` also verifies that the plugins it names exist and accept their arguments.
    """
    path = Path(path)
    data = _read_with_bases(sources.recipe_path(path), chain=())
    override_keys = apply_overrides(data, overrides)
    data.pop("extends", None)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise ZooError(_explain(exc, path, override_keys)) from None
    if check:
        check_plugins(recipe, path)
    return recipe


def from_dict(data: Mapping[str, Any], source: str = "recipe") -> Recipe:
    """Validate an already-resolved recipe (as stored in a run folder)."""
    _refuse_nul_bytes(data, f"{source}: ")
    try:
        return Recipe.model_validate(dict(data))
    except ValidationError as exc:
        raise ZooError(_explain(exc, Path(source), set())) from None


MAX_RECIPE_BYTES = 1 << 20


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ZooError(f"{chain[0]}: extends cycle: {cycle}")
    where = f" (extended by {chain[-1]})" if chain else ""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a device or FIFO would block or never end
            raise ZooError(f"recipe {path}{where} is not a regular file")
        if info.st_size > MAX_RECIPE_BYTES:
            raise ZooError(
                f"recipe {path}{where} is {info.st_size:,} bytes: not a recipe (at most {MAX_RECIPE_BYTES:,})"
            )
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ZooError(f"recipe not found: {path}{where}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ZooError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise ZooError(f"{path}: cannot read: {exc}") from None
    _refuse_nul_bytes(data, f"{path}: ")
    _anchor_paths(data, path.parent)
    base_name = data.get("extends")
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise ZooError(f"{path}: extends: must be the path of a base recipe, got {base_name!r}")
    base = _read_with_bases(Path(base_name), (*chain, path))
    base.pop("extends", None)
    return merge(base, data)


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: tables merge key by key, everything else in ``update`` replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def differing_keys(tables: list[Mapping[str, Any]], prefix: str = "") -> list[str]:
    """Dotted keys whose values are not the same in every one of ``tables``, sorted."""
    keys = []
    for key in sorted(set().union(*tables)):
        values = [table.get(key) for table in tables]
        if all(isinstance(value, Mapping) for value in values):
            keys += differing_keys(values, f"{prefix}{key}.")
        elif any(value != values[0] for value in values):
            keys.append(f"{prefix}{key}")
    return keys


def _refuse_nul_bytes(value: Any, origin: str, key: str = "") -> None:
    """No string in a recipe holds a NUL byte: TOML allows one (``"\\u0000"``), but no path can hold
    it (output.dir, data.root, extends, a recipe: source, a plugin's argument), and pathlib raises."""
    if isinstance(value, str) and "\0" in value:
        raise ZooError(f"{origin}{key}: {value!r} holds a NUL byte (\\0), which no path or name may hold")
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else ()
    for name, item in items:
        child = f"{key}[{name}]" if isinstance(name, int) else f"{key}.{name}" if key else name
        _refuse_nul_bytes(item, origin, child)


def _anchor_paths(data: dict[str, Any], folder: Path) -> None:
    """Make the recipe's relative paths relative to ``folder`` (the file's, or the cwd for overrides)."""

    def anchored(value: Any) -> Any:
        return str((folder / value).resolve()) if isinstance(value, str) and value else value

    if isinstance(data.get("extends"), str) and data["extends"]:
        data["extends"] = str(sources.recipe_path(folder / data["extends"]))
    model, data_section, output = (data.get(key) for key in ("model", "data", "output"))
    if isinstance(model, dict) and "pretrained" in model:
        # A value that does not parse stays as written: the schema reports it, naming the file and the key.
        with contextlib.suppress(ValueError):
            model["pretrained"] = sources.parse(model["pretrained"], folder)
    if isinstance(data_section, dict) and "root" in data_section:
        data_section["root"] = anchored(data_section["root"])
    args = data_section.get("args") if isinstance(data_section, dict) else None
    path = args.get("path") if isinstance(args, dict) else None
    # A dataset's path argument (hf's folder) that names a folder beside the recipe is that folder;
    # anything else stays as written: a Hub dataset id, or a folder the plugin finds from the cwd.
    if isinstance(path, str) and path and not os.path.isabs(path) and os.path.isdir(folder / path):
        args["path"] = str((folder / path).resolve())
    if isinstance(output, dict) and "dir" in output:
        output["dir"] = anchored(output["dir"])


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> set[str]:
    """Merge ``key.path=value`` overrides into ``data``; values are TOML (bare words are strings).

    A table value replaces the whole table (``loss.args={}`` clears it, when switching
    ``loss.name``); a dotted key changes one entry. Returns the keys overridden. Relative paths
    in overrides are relative to the current folder.
    """
    layer: dict[str, Any] = {}
    keys = set()
    replacing = []  # keys given a whole table
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
            raise ZooError(f"override {override!r}: write KEY=VALUE, for example train.epochs=3")
        if key.partition(".")[0] == "extends":  # the bases are merged before any override applies
            raise ZooError(f"override {override!r}: extends can only be set in the recipe file; write it there")
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word: optim.name=adam
        *tables, last = key.split(".")
        section = layer
        for table in tables:
            section = section.setdefault(table, {})
            if not isinstance(section, dict):
                raise ZooError(f"override {override!r} conflicts with an earlier override of {table}")
        section[last] = value
        keys.add(key)
        if isinstance(value, dict):
            replacing.append(key)
    _refuse_nul_bytes(layer, "override ")
    _anchor_paths(layer, Path.cwd())
    data.update(merge(data, layer))
    for key in replacing:  # replaced, not merged into what the recipe had
        *parents, last = key.split(".")
        given, target = layer, data
        for part in parents:
            given, target = given[part], target.setdefault(part, {})
        target[last] = copy.deepcopy(given[last])
    return keys


def _explain(exc: ValidationError, path: Path, override_keys: set[str]) -> str:
    """One line for the first problem pydantic found: file, key, what is wrong, what is allowed. Of a
    union's errors, the one that got deepest into the value: [1.0, -1.0] for "balanced" or a list of
    weights is a list with a bad weight, not a wrong "balanced"."""
    errors = exc.errors()
    first = _key_parts(errors[0])
    error = max((e for e in errors if _key_parts(e)[: len(first)] == first), key=lambda e: len(_key_parts(e)))
    parts = _key_parts(error)
    key = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in parts).replace(".[", "[")
    overridden = [given for given in override_keys if key == given or key.startswith((f"{given}.", f"{given}["))]
    origin = f"override {overridden[0]}" if overridden else str(path)
    if error["type"] == "extra_forbidden":
        parent = _schema_at(parts[:-1])
        siblings = list(parent.model_fields) if parent else []
        parent_key = key.rpartition(".")[0]
        allowed = (
            did_you_mean(str(parts[-1]), siblings, f"{parent_key}." if parent_key else "")
            or f" (allowed here: {', '.join(siblings)})"
        )
        return f"{origin}: unknown key '{key}'{allowed}"
    if error["type"] == "missing":
        return f"{origin}: missing required key '{key}'"
    message = str(error["msg"]).removeprefix("Value error, ")
    wanted = [e for e in errors if _key_parts(e) == parts]
    if len(wanted) > 1 and all(_wrong_kind(e) for e in wanted):  # each member of a union refused the value's kind
        message = "Input should be " + " or ".join(str(e["msg"]).removeprefix("Input should be ") for e in wanted)
    if not key:  # a rule across sections names its keys itself
        return f"{origin}: {message}"
    got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict) else ""
    field = _field_description(parts)
    expected = f"; expected {field}" if field else ""
    return f"{origin}: {key}: {message}{got}{expected}"


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _wrong_kind(error: Any) -> bool:
    """A pydantic error for a value of the wrong type or choice (not one of the right type out of range)."""
    kind = str(error["type"])
    return (kind.endswith(("_type", "_parsing")) or kind == "literal_error") and str(error["msg"]).startswith(
        "Input should be "
    )


def _key_parts(error: Any) -> list[Any]:
    """The keys and list indices of a pydantic error's location, without its union member tags."""
    return [part for part in error["loc"] if isinstance(part, int) or _is_key(part)]


def _is_key(part: Any) -> bool:
    # pydantic puts union members ("bool", "list[str]", "function-after[...]") into error locations.
    return isinstance(part, str) and re.fullmatch(r"[A-Za-z_]\w*", part) is not None and part not in _TYPE_TAGS


def _schema_at(parts: list[Any]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Recipe
    for part in parts:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _model_in(field.annotation)
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found:
            return found
    return None


def _field_description(parts: list[Any]) -> str:
    if not parts or isinstance(parts[-1], int):
        return ""
    parent = _schema_at(parts[:-1])
    field = parent.model_fields.get(parts[-1]) if parent else None
    return (field.description or "") if field else ""


def check_plugins(recipe: Recipe, path: Path) -> None:
    """The recipe's plugins exist and their args fit their signatures (imports the plugins)."""
    origin = str(path)
    factory = registry.check("model", recipe.model.backbone, recipe.model.args, origin)
    registry.check("dataset", recipe.data.dataset, recipe.data.args, origin, positional=2)  # root, split
    registry.check("loss", recipe.loss.name, recipe.loss.args, origin)
    for name in recipe.logger_names():
        registry.check("logger", name, recipe.log.arguments().get(name, {}), origin)
    if isinstance(recipe.model.pretrained, sources.PluginWeights) and not registry.takes(factory, "pretrained"):
        raise ZooError(
            f"{path}: model.pretrained: {recipe.model.backbone} has no weights of its own (its factory takes no "
            "'pretrained' argument); use a run folder or 'recipe:FILE.toml'"
        )


def default_data_dir() -> Path:
    return Path(os.environ.get("ZOO_DATA_DIR") or Path.home() / ".cache" / "zoo" / "data")


def cache_dir() -> Path:
    return Path(os.environ.get("ZOO_CACHE_DIR") or Path.home() / ".cache" / "zoo")
