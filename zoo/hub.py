"""Sharing run folders through the Hugging Face Hub: ``zoo push`` and ``zoo pull``.

The token comes from huggingface_hub's own sources (``HF_TOKEN``, ``hf auth login``); zoo never
reads, prints or stores it. Pulls go into the Hugging Face cache (``snapshot_download``), so
they work offline once cached. Only run-folder files are pushed or pulled, and only
safetensors weights are ever loaded from them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2  # huggingface_hub 2.x's HTTP client: its transport errors mean "no network"
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from . import artifacts, catalog
from .errors import ZooError

# What a run folder shares: weights, timm-layout config, model card, recipe, results, plots. Exact
# names, no wildcards: a pull fetches nothing else, whatever else a repo holds or however it is named.
SHARED_FILES = [
    artifacts.WEIGHTS,
    artifacts.CONFIG,
    artifacts.MODEL_CARD,
    artifacts.RECIPE,
    artifacts.RESULTS,
    *artifacts.PLOTS,
]


@dataclass
class Pushed:
    url: str
    commit: str


def push(
    folder: Path, repo: str, private: bool = False, revision: str | None = None, message: str | None = None
) -> Pushed:
    """Upload a finished run folder to ``repo`` (created if needed), on ``revision`` (default main)."""
    results = artifacts.read_results(folder)
    if not (folder / artifacts.WEIGHTS).is_file() or not results or results.get("state") != "finished":
        raise ZooError(f"{folder} is not a finished zoo run (see its results.json): only finished runs are pushed")
    api = HfApi()
    with _hub_errors(repo):
        url = api.create_repo(repo, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo,
            folder_path=folder,
            allow_patterns=SHARED_FILES,
            revision=revision,
            commit_message=message or f"zoo push {folder.name}",
        )
    record = {"repo": repo, "revision": revision or constants.DEFAULT_REVISION, "commit": info.oid, "url": str(url)}
    artifacts.write_json(folder / catalog.HUB_RECORD, record)
    return Pushed(str(url), info.oid)


def pull(spec: str) -> Path:
    """The local folder of ``ORG/NAME[@REVISION]``, or of a registry.json name at its pinned commit."""
    expected: catalog.HubSource | None = None
    if "/" in spec.split("@")[0]:
        repo, _, revision = spec.partition("@")
    else:
        entry = catalog.entry(spec)
        if entry.sources.hub is None:
            raise ZooError(
                f"'{spec}' has no Hub source, only a recipe: set model.pretrained = 'recipe:{entry.sources.recipe}' "
                "and zoo builds it (relative to registry.json)"
            )
        expected = entry.sources.hub
        repo, revision = expected.repo, expected.revision
    where = f"{repo}@{revision}" if revision else repo
    with _hub_errors(where):
        folder = Path(snapshot_download(repo, revision=revision or None, allow_patterns=SHARED_FILES))
    weights = folder / artifacts.WEIGHTS
    if not weights.is_file():
        raise ZooError(f"{where} has no {artifacts.WEIGHTS}: it is not a zoo or timm model repo")
    if expected is not None:
        found = catalog.sha256_of(weights)
        if found != expected.sha256:
            raise ZooError(
                f"{spec}: {weights} has sha256 {found}, but registry.json pins {expected.sha256}; refusing to load it "
                f"(delete the cached copy under {constants.HF_HUB_CACHE} and pull again)"
            )
    return folder


@contextmanager
def _hub_errors(what: str) -> Iterator[None]:
    """Turn the Hub's answers (and no answer) into one-line ZooErrors naming ``what``."""
    try:
        yield
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise ZooError(
            f"{what} is not in the Hugging Face cache ({os.path.abspath(constants.HF_HUB_CACHE)}) and {offline}; "
            "pull it once online"
        ) from None
    except RevisionNotFoundError:
        raise ZooError(f"{what}: no such revision on the Hub") from None
    except RepositoryNotFoundError:
        raise ZooError(f"{what}: no such repo, or no access to it (log in: `hf auth login` or HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise ZooError(f"{what}: the Hub answered {status}: {str(exc).splitlines()[0]}") from None
    except httpx2.TransportError as exc:
        raise ZooError(f"{what}: cannot reach the Hub at {constants.ENDPOINT} ({type(exc).__name__})") from None
