"""Talking to the Hugging Face Hub: repo ids checked, every answer (and no answer) as one line, and a
team's registry.json fetched.

The modules that reach the Hub (hub.py for run folders, registry.py for Hub registries, and the
``hf`` dataset plugin) go through ``zoo._hub.hub_errors``, so a missing repo, a missing revision,
no network or an unwritable cache reads the same everywhere.
"""

from __future__ import annotations

from pathlib import Path

from .._hub import hub_errors
from ..config.sources import HUB_PREFIX, HUB_REPO, HubRepo
from ..errors import ZooError


def pull_registry(source: HubRepo) -> Path:
    """A team's registry.json from a Hub model repo, at ``source``'s revision (default: the latest), with the
    recipes beside it (a registry entry's recipe source is relative to its registry.json)."""
    from huggingface_hub import snapshot_download  # its HTTP stack only when a registry is pulled

    with hub_errors(f"registry {HUB_PREFIX}{source.spec}"):
        check_repo_id(source.repo)
        folder = Path(
            snapshot_download(source.repo, revision=source.revision, allow_patterns=["registry.json", "*.toml"])
        )
    if not (folder / "registry.json").is_file():
        raise ZooError(f"ZOO_REGISTRY: {HUB_PREFIX}{source.spec} holds no registry.json at its top level")
    return folder / "registry.json"


def check_repo_id(repo: str) -> None:
    if not HUB_REPO.fullmatch(repo) or ".." in repo:
        raise ZooError(f"'{repo}' is not a Hub repo id: write ORG/NAME (letters, digits, '-', '_', '.')")
