"""`zoo run --nproc N`: hand over to torchrun, and report what its ranks left behind.

The launching zoo and its ranks talk through two environment variables: the launcher's pid
(``end_with_launcher`` in distributed.py: a rank never outlives it) and a folder of notes, where a
rank leaves its user error (``rank-NNNNNN``, one line) and rank 0 its run folder. The launcher
reports from the notes once for all ranks, in one line, without torchrun's own log lines.
Importing this module imports no torch: a rank's user error passes through it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from .._files import atomic_write

NOTES = "ZOO_LAUNCHER_NOTES"  # the folder where ranks leave notes for it
RUN_FOLDER = "run-folder"  # rank 0's note: the run folder it writes
USER_ERROR_EXIT = 2
RANK_LEFT_EXIT = 3  # a rank that stopped because another rank had ended (the launcher says which)


def leave_note(name: str, text: str) -> bool:
    """Leave ``text`` for the launching zoo under ``name``; False when no zoo launched this process."""
    notes = os.environ.get(NOTES)
    if not notes:
        return False
    atomic_write(Path(notes, name), text.encode())
    return True


def leave_user_error(line: str) -> bool:
    """A rank's one-line user error, for the launching zoo to report once for all ranks."""
    return leave_note(f"rank-{int(os.environ.get('RANK', '0')):06d}", line)


def torchrun(nproc: int, zoo_arguments: list[str]) -> None:
    """Run ``python -m zoo ZOO_ARGUMENTS`` on ``nproc`` ranks under PyTorch's own launcher; exit as they did."""
    import logging
    import tempfile

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    from ..parallel.distributed import LAUNCHER_PID

    # The agent's module logger sets a level of its own: name it too ("Received 2 death signal").
    for logger in ("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.elastic.agent.server.api"):
        logging.getLogger(logger).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ[LAUNCHER_PID] = str(os.getpid())  # the ranks' parent: they end when it does
    with tempfile.TemporaryDirectory(prefix="zoo-ranks-") as notes:
        os.environ[NOTES] = notes
        try:
            torchrun_main(["--standalone", "--nproc_per_node", str(nproc), "-m", "zoo", *zoo_arguments])
        except ChildFailedError as exc:
            reported = sorted(Path(notes).glob("rank-*"))
            if reported:  # a user's mistake: what the other ranks did on their way out is beside the point
                click.echo(reported[0].read_text(), err=True)
                sys.exit(USER_ERROR_EXIT)
            _report_failed_rank(exc.failures, nproc, Path(notes, RUN_FOLDER))
        except SignalException as exc:  # Ctrl-C (or a SIGTERM): torchrun passed it to the ranks
            how = "Ctrl-C" if exc.sigval == signal.SIGINT else signal.Signals(exc.sigval).name
            _mark_stopped(Path(notes, RUN_FOLDER), f"stopped by {how} before the ranks saved the run folder")
            sys.exit(128 + exc.sigval)


def _report_failed_rank(failures: dict[int, Any], nproc: int, run_folder_note: Path) -> None:
    """Exit as the rank that ended first did: killed by a signal, one line (the others stopped with it,
    quietly); an internal error, its own traceback is above and its exit code is ours."""
    causes = {rank: failure for rank, failure in failures.items() if failure.exitcode != RANK_LEFT_EXIT}
    # torchrun stops the surviving ranks with SIGTERM: a rank that ended otherwise came first.
    first = sorted(causes.items(), key=lambda item: (item[1].exitcode == -signal.SIGTERM, item[1].timestamp, item[0]))
    if not first:  # each rank saw another leave: none says why
        click.echo("zoo: error: every rank stopped, each because another had ended; see the lines above", err=True)
        sys.exit(1)
    rank, failure = first[0]
    if failure.exitcode < 0:
        killed = f"rank {rank} was killed ({failure.signal_name()})"
        _mark_stopped(run_folder_note, killed)
        click.echo(
            f"zoo: error: {killed} and the job stopped with it; continue it with --resume and --nproc {nproc}",
            err=True,
        )
        sys.exit(128 - failure.exitcode)
    sys.exit(failure.exitcode)


def _mark_stopped(note: Path, why: str) -> None:
    """Ranks stopped from outside (torchrun kills those that outlast its grace period after Ctrl-C; a
    rank killed alone takes the others with it) can leave their run ``running``: say what happened."""
    if not note.is_file():  # stopped before rank 0 chose its folder: nothing to mark
        return
    from ..runs.folder import RunFolder, RunResults

    folder = RunFolder(note.read_text())
    results = folder.results
    if results is None or results.state != "running":  # the ranks saved it themselves
        return
    reason = f"{why}; resume it from its last checkpoint"
    folder.write_results(RunResults(state="interrupted", reason=reason, recipe_hash=results.recipe_hash))
