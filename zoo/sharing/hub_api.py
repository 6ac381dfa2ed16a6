"""Talking to the Hugging Face Hub: repo ids checked, every answer (and no answer) as one line, and a
team's registry.json fetched.

The modules that reach the Hub (hub.py for run folders, registry.py for Hub registries) go through
``hub_errors``, so a missing repo, a missing revision, no network or an unwritable cache reads
the same everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2  # huggingface_hub 2.x's HTTP client: its transport errors mean "no network"
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..config.sources import HUB_PREFIX, HUB_REPO, HubRepo
from ..errors import ZooError


def pull_registry(source: HubRepo) -> Path:
    """A team's registry.json from a Hub model repo, at ``source``'s revision (default: the latest), with the
    recipes beside it (a registry entry's recipe source is relative to its registry.json)."""
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


@contextmanager
def hub_errors(what: str) -> Iterator[None]:
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
    except HFValidationError as exc:
        raise ZooError(f"{what}: {str(exc).splitlines()[0]}") from None
    except httpx2.TransportError as exc:
        raise ZooError(f"{what}: cannot reach the Hub at {constants.ENDPOINT} ({type(exc).__name__})") from None
    except OSError as exc:  # last: the errors above may be OSErrors too. Read-only, a file, a full disk
        raise ZooError(
            f"{what}: cannot write the Hugging Face cache ({exc.filename or constants.HF_HUB_CACHE}): {exc.strerror}; "
            "set HF_HUB_CACHE to a writable folder"
        ) from None
