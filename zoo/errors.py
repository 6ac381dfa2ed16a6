"""The one exception type for a user's mistake.

A ``ZooError`` is something the user can fix (a typo in a recipe, a missing file, an unknown
plugin name): the CLI prints its message on one line and exits with code 2. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZooError(Exception):
    """A mistake in what the user asked for; the message says what is wrong and how to fix it."""


def did_you_mean(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """' (did you mean 'x' or 'y'?)', or '' when nothing is close; ``prefix`` goes before each."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(prefix + c) for c in close) + "?)"


def from_worker(exc: ZooError) -> ZooError:
    """A ZooError raised in a DataLoader worker, as one line again: the worker's re-raised message
    carries its traceback, and its last line is the user's."""
    return ZooError(str(exc).strip().splitlines()[-1].removeprefix(f"{ZooError.__module__}.ZooError: "))
