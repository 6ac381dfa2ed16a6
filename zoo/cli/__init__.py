"""The ``zoo`` command line: the command group (zoo/cli/group.py) with every command added.

Start-up must stay fast: torch, timm and plugin modules are imported inside the commands that
need them, never at the top of a zoo.cli module.
"""

from __future__ import annotations

import gc
import os
import sys
import traceback

from . import inference, plugins, runs, serving, sharing, training
from .group import cli

for command in (
    plugins.list_command, plugins.info, plugins.plugins,
    training.run, training.show, training.schema,
    inference.eval_command, inference.export_command, inference.predict,
    runs.runs,
    serving.serve, serving.tune,
    sharing.push, sharing.publish, sharing.pull, sharing.registry_group,
):  # fmt: skip
    cli.add_command(command)


def main() -> None:
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        try:
            cli(prog_name="zoo")
        finally:
            # The process ends here. Its finalisation would run full garbage collections over every object
            # torch and torch._dynamo made (about 0.8 s of a one-step run, for nothing): frozen, they are
            # skipped. atexit handlers (trackers' flushes, weakref finalizers) still run after this.
            gc.freeze()
        return
    # A rank of torchrun, its process group already torn down: gloo's C++ threads can still abort
    # the interpreter's finalisation now and then ("terminate called without an active exception",
    # SIGABRT, after a run that went well). The rank leaves through os._exit once its output is
    # flushed, with the exit code (and the traceback, if any) it would have had.
    try:
        cli(prog_name="zoo")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
