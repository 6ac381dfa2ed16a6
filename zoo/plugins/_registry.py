"""The plugin registry: models, datasets, losses and loggers found through Python entry points.

Every plugin, built-in or third-party, is an entry point in one of the groups in ``GROUPS``
(``zoo.models``, ``zoo.datasets``, ``zoo.losses``, ``zoo.loggers``). Listing reads entry-point metadata and the
plugin's source text only; no plugin module is imported until the plugin is used, so a broken
plugin cannot break ``zoo list``. In-process registrations (``@register_model`` in a notebook or
a test) live in the same registry under the provider name ``local``.

A name offered by two providers must be written ``PROVIDER:NAME``.

An entry point whose name ends in ``/*`` is a namespace: one entry point for a whole family of
models (``timm/*`` provides ``timm/resnet18``, ``timm/resnet18.a1_in1k``, ...). Its target is an
object with ``names(pattern, pretrained)``, ``factory(name)`` and ``describe(name)``. Listing
shows the namespace as one row unless the pattern reaches inside it (``'timm/resnet*'``); only
then is the namespace imported.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.machinery
import importlib.metadata
import inspect
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, Protocol, TypeVar

from ..errors import ZooError, did_you_mean
from ._source import static_docstring

Kind = Literal["model", "dataset", "loss", "logger"]
GROUPS: dict[Kind, str] = {
    "model": "zoo.models",
    "dataset": "zoo.datasets",
    "loss": "zoo.losses",
    "logger": "zoo.loggers",
}
LOCAL = "local"
NAMESPACE_SUFFIX = "/*"

F = TypeVar("F", bound=Callable)


class PluginLoadError(ZooError):
    """A plugin's module failed to import, or its target is missing or not callable."""


class Namespace(Protocol):
    """What a ``NAME/*`` entry point's target provides; member names come without the prefix."""

    def names(self, pattern: str, pretrained: bool) -> list[str]: ...

    def factory(self, name: str) -> Callable | None:
        """The member's factory, or None when there is no such member."""

    def describe(self, name: str) -> str: ...


@dataclass
class Plugin:
    kind: Kind
    name: str
    provider: str  # distribution name, or "local" for in-process registrations
    version: str
    target: str  # "module:attr" as the entry point declares it
    _factory: Callable | None = field(default=None, repr=False, compare=False)

    @property
    def qualified_name(self) -> str:
        return f"{self.provider}:{self.name}"

    @property
    def is_namespace(self) -> bool:
        return self.name.endswith(NAMESPACE_SUFFIX)

    @property
    def prefix(self) -> str:
        """``timm/`` for the namespace ``timm/*``."""
        return self.name.removesuffix("*")

    def load_target(self) -> object:
        """Import the plugin's module and return the object its entry point names."""
        module_name, _, attr = self.target.partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in filter(None, attr.split(".")):
                obj = getattr(obj, part)
        except (Exception, SystemExit) as exc:  # a third party's module may raise anything on import, or exit
            raise PluginLoadError(
                f"{self.kind} plugin '{self.name}' from {self.provider} {self.version} failed to load "
                f"({self.target}): {type(exc).__name__}: {exc}"
            ) from exc
        return obj

    def load(self) -> Callable:
        """Import the plugin's module and return its factory (a namespace's own object for ``NAME/*``)."""
        if self._factory is None:
            obj = self.load_target()
            problem = None if self.is_namespace else _unusable(obj)
            if problem is not None:
                raise PluginLoadError(f"{self.kind} plugin '{self.name}' from {self.provider}: {self.target} {problem}")
            self._factory = obj  # type: ignore[assignment]
        return self._factory  # type: ignore[return-value]

    @property
    def description(self) -> str:
        """First line of the factory's docstring, read from source without importing it."""
        namespace = next((p for p in _entry_point_plugins() if p.is_namespace and self.name.startswith(p.prefix)), None)
        if namespace is not None and not self.is_namespace:
            return _namespace(namespace).describe(self.name.removeprefix(namespace.prefix))
        if self._factory is not None and not self.is_namespace:
            doc = self._factory.__doc__ or ""
        else:
            module_name, _, attr = self.target.partition(":")
            doc = static_docstring(module_name, attr.split(".")[0])
        return doc.strip().split("\n", 1)[0]


def _unusable(factory: object) -> str | None:
    """Why zoo cannot call ``factory`` with a recipe's arguments, checked against its signature; None if it can."""
    if not callable(factory):
        return "is not callable"
    try:
        inspect.signature(factory)
    except (ValueError, TypeError):  # a builtin such as dict
        return "has no signature to check a recipe's arguments against: name a Python function or class"
    return None


_local: dict[tuple[Kind, str], Plugin] = {}


@cache
def _entry_point_plugins() -> tuple[Plugin, ...]:
    found: dict[tuple[Kind, str, str], Plugin] = {}
    entry_points = importlib.metadata.entry_points()
    for kind, group in GROUPS.items():
        for ep in entry_points.select(group=group):
            dist = ep.dist
            provider = dist.metadata["Name"] if dist is not None else "unknown"
            version = dist.version if dist is not None else ""
            # The same distribution can be visible twice (an egg-info beside its dist-info): keep one.
            found.setdefault((kind, ep.name, _canonical(provider)), Plugin(kind, ep.name, provider, version, ep.value))
    return tuple(found.values())


def refresh() -> None:
    """Forget what was discovered, so that plugins installed since are found."""
    _entry_point_plugins.cache_clear()
    static_docstring.cache_clear()


def plugins(kind: Kind | None = None, pattern: str | None = None, pretrained: bool = False) -> list[Plugin]:
    """Every known plugin of ``kind`` (all kinds when None) whose name matches the glob ``pattern``.

    A pattern inside a namespace (``timm/res*``) lists its members; ``pretrained`` lists only
    members with weights (as ``NAME.TAG``) and needs such a pattern.
    """
    everything = [*_entry_point_plugins(), *_local.values()]
    found = []
    inside_a_namespace = False
    for plugin in everything:
        if kind is not None and plugin.kind != kind:
            continue
        if plugin.is_namespace and pattern is not None and pattern.startswith(plugin.prefix):
            inside_a_namespace = True
            found += _members(plugin, pattern.removeprefix(plugin.prefix), pretrained)
        elif pattern is None or fnmatch.fnmatchcase(plugin.name, pattern):
            found.append(plugin)
    if pretrained and not inside_a_namespace:
        namespaces = [p.name for p in everything if p.is_namespace] or ["none installed"]
        raise ZooError(
            f"--pretrained lists the weights of a namespace's models: give a pattern inside one "
            f"({', '.join(namespaces)}), for example 'timm/resnet*'"
        )
    return sorted(found, key=lambda p: (list(GROUPS).index(p.kind), p.name, p.provider))


def _namespace(plugin: Plugin) -> Namespace:
    return plugin.load()  # type: ignore[return-value]


def _members(namespace: Plugin, pattern: str, pretrained: bool) -> list[Plugin]:
    provider = _namespace(namespace)
    return [
        Plugin(namespace.kind, namespace.prefix + name, namespace.provider, namespace.version, namespace.target)
        for name in provider.names(pattern, pretrained)
    ]


def get(kind: Kind, name: str) -> Plugin:
    """The plugin called ``name`` (or ``PROVIDER:NAME``); a ZooError names the alternatives."""
    provider, _, bare = name.rpartition(":")
    same_name = [p for p in plugins(kind) if p.name == bare]
    matches = [p for p in same_name if not provider or _canonical(p.provider) == _canonical(provider)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        choices = " or ".join(f"'{p.qualified_name}'" for p in matches)
        raise ZooError(f"{kind} '{bare}' is offered by several plugins: write {choices}")
    if same_name:
        offered = ", ".join(p.provider for p in same_name)
        raise ZooError(f"{kind} '{bare}' is not offered by '{provider}' (it is offered by {offered})")
    for namespace in plugins(kind):
        if namespace.is_namespace and bare.startswith(namespace.prefix):
            return _member(namespace, bare)
    names = sorted({p.name for p in plugins(kind)})
    hint = did_you_mean(bare, names) or f" (known {kind}s: {', '.join(names) or 'none'})"
    raise ZooError(f"unknown {kind} '{name}'{hint}; `zoo list {kind}s` shows them all")


def _member(namespace: Plugin, name: str) -> Plugin:
    provider = _namespace(namespace)
    member = name.removeprefix(namespace.prefix)
    factory = provider.factory(member)
    if factory is None:
        close = did_you_mean(member, provider.names("*", False), namespace.prefix)
        raise ZooError(
            f"unknown {namespace.kind} '{name}'{close}; `zoo list {namespace.kind}s '{namespace.prefix}*'` shows them"
        )
    return Plugin(namespace.kind, name, namespace.provider, namespace.version, namespace.target, factory)


# The recipe keys that name each kind's plugin and its arguments, for error messages. Each logger
# has its own table of arguments, named after it (``[log.csv]``).
RECIPE_KEYS: dict[Kind, tuple[str, str]] = {
    "model": ("model.backbone", "model.args"),
    "dataset": ("data.dataset", "data.args"),
    "loss": ("loss.name", "loss.args"),
    "logger": ("log.to", "log.{name}"),
}


def _args_key(kind: Kind, name: str) -> str:
    return RECIPE_KEYS[kind][1].format(name=name)


def check(kind: Kind, name: str, args: Mapping[str, Any], where: str = "", positional: int = 0) -> Callable:
    """The factory of plugin ``name``, once ``args`` fit its signature.

    Errors name the recipe key, after ``where`` (the recipe file or run folder) when given.
    ``positional`` counts the leading parameters that zoo passes itself (a dataset's root and split).
    """
    name_key, args_key = RECIPE_KEYS[kind][0], _args_key(kind, name)
    origin = f"{where}: " if where else ""
    try:
        factory = get(kind, name).load()
    except ZooError as exc:
        raise type(exc)(f"{origin}{name_key}: {exc}") from exc.__cause__
    check_args(factory, args, f"{origin}{args_key}", positional)
    return factory


def instantiate(kind: Kind, name: str, args: Mapping[str, Any], where: str = "", *leading: Any, **supplied: Any) -> Any:
    """Load plugin ``name``, check ``args`` against its signature and call ``factory(*leading, **args, **supplied)``.

    The one place where zoo calls a plugin. ``leading`` and ``supplied`` are what zoo passes itself
    (a dataset's root and split; a model's ``pretrained`` or ``num_classes``). A ValueError or
    TypeError that the plugin raises about its arguments becomes a one-line ZooError naming the
    recipe key (after ``where``, the recipe file or run folder, when given).
    """
    factory = check(kind, name, args, where, len(leading))
    try:
        return factory(*leading, **args, **supplied)
    except (ValueError, TypeError) as exc:
        origin = f"{where}: " if where else ""
        raise ZooError(f"{origin}{_args_key(kind, name)}: {name} rejected its arguments: {exc}") from exc


def check_args(factory: Callable, args: Mapping[str, Any], key: str, positional: int = 0) -> None:
    """``args`` fit ``factory``'s signature: known names, and the type of each simple default."""
    parameters = dict(inspect.signature(factory).parameters)
    passed_by_zoo = list(parameters)[:positional]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = [
        n for n, p in parameters.items() if n not in passed_by_zoo and p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    for name, value in args.items():
        if not _finite(value):
            raise ZooError(f"{key}.{name}: {value!r} holds a number that is not finite; write a finite one")
        parameter = parameters.get(name)
        if parameter is None or name in passed_by_zoo:
            if takes_any and name not in passed_by_zoo:
                continue
            hint = did_you_mean(name, accepted) or f" (it takes: {', '.join(accepted) or 'no arguments'})"
            raise ZooError(f"{key}.{name}: not an argument of this plugin{hint}")
        default = parameter.default
        if isinstance(default, bool | int | float | str) and not _fits(value, type(default)):
            raise ZooError(
                f"{key}.{name}: expected {type(default).__name__} (like the default {default!r}), got {value!r}"
            )
        optional = _optional_simple_type(parameter.annotation) if default is None else None
        if optional is not None and not _fits(value, optional):
            raise ZooError(f"{key}.{name}: expected {optional.__name__}, got {value!r}")
    missing = [
        n
        for n, p in parameters.items()
        if n not in passed_by_zoo
        and n not in args
        and p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    if missing:
        raise ZooError(f"{key}: missing required argument(s): {', '.join(missing)}")


def takes(factory: Callable, parameter: str) -> bool:
    """Whether ``factory`` has a parameter called ``parameter`` (``pretrained``, ``num_classes``)."""
    return parameter in inspect.signature(factory).parameters


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(item) for item in value)
    return True


def _optional_simple_type(annotation: Any) -> type | None:
    """``str`` for ``str | None`` (a string under ``from __future__ import annotations``, or the type
    itself): the type an argument that defaults to None must have; None for any other annotation."""
    parts = {part.strip() for part in str(annotation).split("|")}
    others = parts - {"None"}
    if len(parts) != 2 or len(others) != 1:
        return None
    return {"str": str, "int": int, "float": float, "bool": bool}.get(others.pop())


def _fits(value: Any, expected: type) -> bool:
    if expected is bool or isinstance(value, bool):
        return expected is bool and isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


def strict_plugins() -> bool:
    """ZOO_STRICT_PLUGINS=1: a plugin that fails to load is an error instead of a report."""
    return os.environ.get("ZOO_STRICT_PLUGINS", "").lower() in {"1", "true", "yes"}


def load_all(kind: Kind | None = None) -> list[tuple[Plugin, PluginLoadError | None]]:
    """Load every plugin, pairing each with the error it raised (None when it loaded)."""
    results: list[tuple[Plugin, PluginLoadError | None]] = []
    for plugin in plugins(kind):
        try:
            plugin.load()
            results.append((plugin, None))
        except PluginLoadError as exc:
            if strict_plugins():
                raise PluginLoadError(f"{exc} (ZOO_STRICT_PLUGINS is set)") from exc
            results.append((plugin, exc))
    return results


def register(kind: Kind, name: str | None = None) -> Callable[[F], F]:
    """Decorator registering a factory in this process: ``@zoo.register_model("tiny")``.

    ``name`` defaults to the factory's ``__name__``; in-process plugins are provided by ``local``
    and a second registration of the same name replaces the first (re-running a notebook cell).
    """

    def decorate(factory: F) -> F:
        plugin_name = name or factory.__name__
        target = f"{factory.__module__}:{factory.__qualname__}"
        _local[(kind, plugin_name)] = Plugin(kind, plugin_name, LOCAL, "", target, factory)
        return factory

    return decorate


def unregister(kind: Kind, name: str) -> None:
    """Remove an in-process registration."""
    _local.pop((kind, name), None)


def _canonical(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-").replace(".", "-")
