"""The Hugging Face Hub's answers (and no answer) as one-line ZooErrors, for every module that reaches it:
run folders and registries (``zoo.sharing``) and Hub datasets (``zoo.data.hf``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2  # huggingface_hub 2.x's HTTP client: its transport errors mean "no network"
from huggingface_hub import constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .errors import ZooError


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
