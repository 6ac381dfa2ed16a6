"""The ``zoo`` command group itself: its options, how a ZooError leaves it, and what every command shares.

Start-up must stay fast: torch, timm and plugin modules are imported inside the commands that
need them, never at the top of a zoo.cli module.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from .._version import __version__
from ..errors import ZooError
from ..training import launch


class UserError(click.ClickException):
    """A ZooError on its way out: one line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        line = f"zoo: error: {self.format_message()}"
        if not launch.leave_user_error(line):  # under `zoo run --nproc` the launcher reports it, once
            click.echo(line, err=True)


class ZooGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ZooError as exc:
            raise UserError(str(exc)) from exc
        except KeyboardInterrupt:  # Ctrl-C outside training (which saves and exits 130 itself): the shell's code,
            sys.exit(130)  # without click's "Aborted!" (once per rank under torchrun)


@click.group(cls=ZooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zoo")
@click.option(
    "-v", "--verbose", is_flag=True, help="Also show what libraries (huggingface_hub, timm, torch) log and warn."
)
def cli(verbose: bool) -> None:
    """zoo: a plugin-based model zoo and fine-tuning registry for PyTorch.

    Models, datasets, losses and loggers are plugins found through Python entry points; recipes
    (TOML files) put them together into a fine-tuning run.

    \b
    Quick start:
      zoo list                              what is installed
      zoo info mnist_cnn                    a plugin's arguments
      zoo run recipes/mnist_finetune.toml   fine-tune, evaluate and save a run folder

    Environment: ZOO_DATA_DIR (datasets, default ~/.cache/zoo/data), ZOO_CACHE_DIR (cached
    runs, default ~/.cache/zoo), ZOO_STRICT_PLUGINS=1 (a broken plugin is an error).
    """
    route_library_output(verbose)


# Errors whose record carries an internal bug's traceback: shown without --verbose too (uvicorn's
# "Exception in ASGI application" when a request of `zoo serve` hits a bug and is answered 500).
SHOWN_ALWAYS = ("uvicorn.error",)


def route_library_output(verbose: bool) -> None:
    """Send what libraries log, and Python warnings, through ``logging`` to one handler on stderr that
    shows them with --verbose only (but for the errors of SHOWN_ALWAYS): otherwise a library's passing remark
    (huggingface_hub's "Ignored error while writing ..." with an unwritable cache) would come before the
    user's one error line.

    huggingface_hub brings its own stderr handler, so its records are sent up to the root instead.
    """
    import logging

    from huggingface_hub.utils import logging as hub_logging

    hub_root = hub_logging.get_logger()
    for handler in list(hub_root.handlers):
        hub_root.removeHandler(handler)
    hub_logging.enable_propagation()
    logging.captureWarnings(True)
    root = logging.getLogger()
    for handler in [handler for handler in root.handlers if handler.get_name() == "zoo"]:  # an earlier command's
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("zoo")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG if verbose else logging.ERROR)  # present either way: no lastResort
    if not verbose:
        handler.addFilter(lambda record: record.name in SHOWN_ALWAYS)
    root.addHandler(handler)
    if verbose:
        root.setLevel(logging.INFO)


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
