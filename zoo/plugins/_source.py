"""A plugin's docstring read from its source file, so that listing plugins imports none of them."""

from __future__ import annotations

import ast
import importlib.machinery
import sys
from functools import cache
from pathlib import Path


@cache
def static_docstring(module_name: str, attr: str) -> str:
    """The docstring of ``attr`` in ``module_name``'s source file, found without importing anything."""
    search_path: list[str] | None = sys.path
    spec = None
    parts = module_name.split(".")
    for depth in range(len(parts)):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: depth + 1]), search_path)
        if spec is None:
            return ""
        search_path = list(spec.submodule_search_locations or [])
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return ""
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return ""  # `zoo plugins` reports a broken plugin; the listing just has no description
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == attr:
            return ast.get_docstring(node) or ""
    return ""
