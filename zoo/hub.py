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

from . import catalog
from .artifacts import HubRecord, RunFolder
from .errors import ZooError
from .sources import HubRepo


@dataclass
class Pushed:
    url: str
    commit: str


def push(
    folder: Path, repo: str, private: bool = False, revision: str | None = None, message: str | None = None
) -> Pushed:
    """Upload a finished run folder to ``repo`` (created if needed), on ``revision`` (default main)."""
    run = RunFolder.existing(folder)
    if not run.file(RunFolder.WEIGHTS).is_file() or run.state != "finished":
        raise ZooError(
            f"{folder} is not a finished zoo run (see its {RunFolder.RESULTS}): only finished runs are pushed"
        )
    api = HfApi()
    with _hub_errors(repo):
        url = api.create_repo(repo, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo,
            folder_path=folder,
            allow_patterns=list(RunFolder.SHARED),
            revision=revision,
            commit_message=message or f"zoo push {folder.name}",
        )
    run.write_hub_record(
        HubRecord(repo=repo, revision=revision or constants.DEFAULT_REVISION, commit=info.oid, url=str(url))
    )
    return Pushed(str(url), info.oid)


def pull(source: HubRepo | str) -> Path:
    """The local folder of a Hub repo (at its revision), or of a registry.json name at its pinned commit."""
    expected: catalog.HubSource | None = None
    label = source if isinstance(source, str) else source.spec
    if isinstance(source, str):
        entry = catalog.entry(source)
        if entry.sources.hub is None:
            raise ZooError(
                f"'{source}' has no Hub source, only a recipe: set model.pretrained = 'recipe:{entry.sources.recipe}' "
                "and zoo builds it (relative to registry.json)"
            )
        expected = entry.sources.hub
        source = HubRepo(expected.repo, expected.revision)
    with _hub_errors(source.spec):
        folder = Path(snapshot_download(source.repo, revision=source.revision, allow_patterns=list(RunFolder.SHARED)))
    weights = folder / RunFolder.WEIGHTS
    if not weights.is_file():
        raise ZooError(f"{source.spec} has no {RunFolder.WEIGHTS}: it is not a zoo or timm model repo")
    if expected is not None:
        found = catalog.sha256_of(weights)
        if found != expected.sha256:
            raise ZooError(
                f"{label}: {weights} has sha256 {found}, but registry.json pins {expected.sha256}; refusing to "
                f"load it (delete the cached copy under {constants.HF_HUB_CACHE} and pull again)"
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
