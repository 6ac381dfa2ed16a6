"""The layout is the architecture: layers that import only downwards, no import circle, short modules.

Every ``import`` and ``from ... import`` inside zoo counts, at any depth of a module (in a
function, under ``TYPE_CHECKING``): a function-level import may defer a heavy dependency, never
dodge a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import zoo

PACKAGE = Path(zoo.__file__).parent

# Lowest first: a module may import from its own layer and the ones above it in this list.
LAYERS = [
    (
        "infrastructure",
        (
            "zoo.errors",
            "zoo._version",
            "zoo._files",
            "zoo._safetensors",
            "zoo._locking",
            "zoo._output",
            "zoo._hub",
            "zoo._lifetime",
        ),
    ),
    ("plugins", ("zoo.plugins",)),
    ("config", ("zoo.config",)),
    ("parallel", ("zoo.parallel",)),
    ("data", ("zoo.data",)),
    ("runs", ("zoo.runs",)),
    ("models", ("zoo.models",)),
    ("tasks", ("zoo.tasks",)),
    ("sharing", ("zoo.sharing",)),
    ("inference", ("zoo.inference",)),
    ("serving", ("zoo.serving",)),
    ("training", ("zoo.training",)),
    ("tuning", ("zoo.tuning",)),
    ("interface", ("zoo.cli", "zoo.__main__", "zoo")),
]
MAX_LINES = 400


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes if prefix != "zoo"):
            return index
    assert module == "zoo", f"{module} belongs to no layer: add it to LAYERS"
    return len(LAYERS) - 1


def _imports(module: str) -> set[str]:
    """The zoo modules that ``module`` imports, anywhere in its body."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def test_every_import_goes_down_the_layers() -> None:
    upwards = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in GRAPH.items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not upwards, "\n".join(upwards)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_no_import_circle() -> None:
    assert _circles(GRAPH) == []


def test_the_circle_finder_finds_circles() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_is_read_in_one_sitting(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines"
