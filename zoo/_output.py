"""What a command tells whoever watches it, in the form that suits them: progress and messages.

Four forms, chosen once per process (``set_format``; the command line's --quiet and --log-format):

- ``bars``: on a terminal, tqdm's progress bars, and messages as lines;
- ``lines``: output that is not a terminal (CI, a cluster's log files): no carriage return, a plain
  progress line on stderr (as bars are) at most every ``LINE_SECONDS`` and when the work ends;
- ``quiet``: neither progress nor messages; the command prints its result only;
- ``json``: one JSON object a line on stdout, ``{"event": ..., ...}``, for a machine to read.

Errors and warnings go to stderr whatever the form.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

Format = Literal["auto", "bars", "lines", "quiet", "json"]
LINE_SECONDS = 10.0

_format: Format = "auto"


def set_format(chosen: Format) -> None:
    global _format
    _format = chosen


def current_format() -> Format:
    """The form in use: ``auto`` is ``bars`` on a terminal (stderr, where bars are drawn), else ``lines``."""
    if _format == "auto":
        return "bars" if sys.stderr.isatty() else "lines"
    return _format


def library_logs_to_root(*names: str) -> None:
    """Loggers that a library gave a stderr handler of its own (MLflow's, torch's) log through the root
    logger instead, which shows them with ``zoo --verbose`` only (zoo.cli.group.route_library_output).
    Straight to the root's handlers: a parent logger may keep its records to itself (torch's does)."""
    for name in names:
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.addHandler(_ToRoot())
        library.propagate = False


class _ToRoot(logging.Handler):
    """Hands a record to the root logger's handlers."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


def message(text: str, event: str = "message", **fields: Any) -> None:
    """A line for the reader: ``text`` as it is, or as JSON with ``fields`` (machine-readable values)."""
    shown = current_format()
    if shown == "quiet":
        return
    if shown == "json":
        print(json.dumps({"event": event, "message": text.strip(), **fields}), flush=True)
    else:
        print(text, flush=True)


def result(text: str, **fields: Any) -> None:
    """The command's result: shown in every form (as a ``result`` event in JSON)."""
    if current_format() == "json":
        print(json.dumps({"event": "result", **fields}), flush=True)
    else:
        print(text, flush=True)


class Progress:
    """Progress through ``total`` units of work, drawn in the current form (nothing when not ``enabled``)."""

    def __init__(self, total: int, description: str, unit: str = "img", initial: int = 0, enabled: bool = True) -> None:
        self.form = current_format() if enabled else "quiet"
        self.total, self.done, self.description, self.unit = total, initial, description, unit
        self.fields: dict[str, Any] = {}
        self.started = self.last_line = time.monotonic()
        self.initial = initial
        self._bar = None
        if self.form == "bars":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=description, unit=unit, unit_scale=True,
                             leave=False, dynamic_ncols=True)  # fmt: skip

    def update(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self.form in ("lines", "json") and time.monotonic() - self.last_line >= LINE_SECONDS:
            self._line()

    def set_fields(self, **fields: Any) -> None:
        """Values shown beside the count (the running loss, the step)."""
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.set_postfix({key: _shown(value) for key, value in fields.items()})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.form in ("lines", "json") and self.done > self.initial:
            self._line()

    def rate(self) -> float:
        """Units per second since this progress began."""
        return (self.done - self.initial) / max(time.monotonic() - self.started, 1e-9)

    def _line(self) -> None:
        self.last_line = time.monotonic()
        rate = self.rate()
        left = (self.total - self.done) / rate if rate > 0 else None
        if self.form == "json":
            print(json.dumps({"event": "progress", "description": self.description, "done": self.done,
                              "total": self.total, "unit": self.unit, f"{self.unit}_per_second": rate,
                              "eta_seconds": left, **self.fields}), flush=True)  # fmt: skip
            return
        parts = [f"{self.description}: {self.done:,}/{self.total:,} {self.unit}"]
        parts += [f"{key} {_shown(value)}" for key, value in self.fields.items()]
        parts.append(f"{rate:,.0f} {self.unit}/s")
        if left is not None:
            parts.append(f"ETA {_duration(left)}")
        print(", ".join(parts), file=sys.stderr, flush=True)  # where bars are drawn: stdout stays the command's


def _shown(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
