"""``Loggers``: the one logger the training loop talks to, passing each call on to every chosen logger.

metrics.jsonl is always written, and a failure to write it is the run's failure. Any other logger
(TensorBoard, a tracker, a third party's) that raises is reported once on stderr and left out for
the rest of the run: a tracker whose server is down must not cost a day of training. A ZooError
(a user's mistake, such as a backend that is not installed) is always an error.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import ZooError
from ...plugins import _registry as registry
from ...plugins.contracts import ContractError
from .base import MetricLogger

ALWAYS = "jsonl"


class Loggers:
    """Several loggers behind the ``MetricLogger`` protocol; those named in ``required`` may not fail."""

    def __init__(self, loggers: Mapping[str, MetricLogger], required: Sequence[str] = (ALWAYS,)) -> None:
        self.active = dict(loggers)
        self.required = set(required)
        self.started: set[str] = set()  # a logger whose start failed, or never came, is not finished

    def start(self, recipe: Mapping[str, Any], run: Path, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        self._each("start", lambda logger: logger.start(recipe, run, step, history))
        self.started = set(self.active)

    def log(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        self._each("log", lambda logger: logger.log(metrics, step, epoch))

    def finish(self, results: Mapping[str, Any], files: Sequence[Path]) -> None:
        self._each("finish", lambda logger: logger.finish(results, files), only=self.started)

    def _each(self, method: str, call: Callable[[MetricLogger], None], only: set[str] | None = None) -> None:
        for name, logger in list(self.active.items()):
            if only is not None and name not in only:
                continue
            try:
                call(logger)
            except ZooError:
                raise
            except Exception as exc:  # a third party's logger may raise anything
                if name in self.required:
                    raise
                del self.active[name]
                print(
                    f"zoo: the {name} logger failed in {method} ({type(exc).__name__}: {_shown(exc)}); "
                    "the run goes on without it",
                    file=sys.stderr,
                    flush=True,
                )


def create_loggers(names: Sequence[str], args: Mapping[str, Mapping[str, Any]], where: str = "") -> Loggers:
    """metrics.jsonl's logger, then each logger in ``names`` built with its ``args[name]``.

    A name that is no logger, or arguments that do not fit it, are one-line ZooErrors naming the
    recipe key (after ``where``, the recipe file, when given).
    """
    chosen = dict.fromkeys([ALWAYS, *names])  # in order, each once
    loggers = {name: registry.instantiate("logger", name, args.get(name, {}), where) for name in chosen}
    for name, logger in loggers.items():
        if not isinstance(logger, MetricLogger):
            raise ContractError(
                f"logger plugin {name!r} breaks the logger contract: its factory returned {type(logger).__name__}, "
                "which lacks start, log or finish (zoo/training/loggers/base.py)"
            )
    return Loggers(loggers)


def _shown(exc: Exception) -> str:
    """An exception's first line, with any password in a URL hidden."""
    return without_passwords((str(exc).strip().splitlines() or [""])[0])


def without_passwords(text: str) -> str:
    """``text`` with the credentials of every URL in it (``https://user:secret@host``) hidden."""
    # Up to the authority's last '@': a password may hold '@' itself (http://alice:p@ss@host).
    return re.sub(r"(\w[\w+.-]*://)[^/\s]*@", r"\1***@", text)
