"""`zoo run --nproc`'s launcher: what it reports from its ranks' failures and notes (without torchrun)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from conftest import write_finished_run
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from zoo.runs.folder import RunFolder, RunResults
from zoo.training import launch


def failure(rank: int, exitcode: int, timestamp: int) -> ProcessFailure:
    made = ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file="")
    made.timestamp = timestamp
    return made


@pytest.mark.parametrize(
    ("failures", "code", "line"),
    [
        # Rank 1 killed; rank 0 noticed (RANK_LEFT) or was stopped by torchrun (SIGTERM), even at the same moment.
        ({0: (launch.RANK_LEFT_EXIT, 5), 1: (-signal.SIGKILL, 5)}, 137, "rank 1 was killed (SIGKILL)"),
        ({0: (-signal.SIGTERM, 5), 1: (-signal.SIGKILL, 6)}, 137, "rank 1 was killed (SIGKILL)"),
        # A rank killed by SIGTERM from outside is reported, not taken for torchrun's own.
        ({0: (launch.RANK_LEFT_EXIT, 5), 1: (-signal.SIGTERM, 4)}, 143, "rank 1 was killed (SIGTERM)"),
        # An internal error: that rank's traceback is above; its exit code is the launcher's, no line added.
        ({0: (1, 5), 1: (-signal.SIGTERM, 5)}, 1, None),
        # Each rank saw the other leave: still one line.
        ({0: (launch.RANK_LEFT_EXIT, 5), 1: (launch.RANK_LEFT_EXIT, 5)}, 1, "every rank stopped"),
    ],
)
def test_the_rank_that_ended_first_is_reported_in_one_line(
    failures: dict[int, tuple[int, int]], code: int, line: str | None, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exited:
        launch._report_failed_rank(
            {rank: failure(rank, *value) for rank, value in failures.items()}, 2, Path("/nonexistent/note")
        )
    assert exited.value.code == code
    stderr = capsys.readouterr().err
    if line is None:
        assert stderr == ""
    else:
        assert stderr.startswith(f"zoo: error: {line}") and stderr.count("\n") == 1, stderr
        assert "--resume and --nproc 2" in stderr or "every rank" in stderr


def test_a_run_left_running_after_ctrl_c_is_marked_interrupted(tmp_path: Path) -> None:
    """torchrun kills ranks that outlast its grace period: the launcher says what happened to the run."""
    folder = write_finished_run(tmp_path / "run")
    folder.write_results(RunResults(state="running", recipe_hash="abc"))
    note = tmp_path / launch.RUN_FOLDER
    note.write_text(str(folder.path))
    launch._mark_stopped(note, "stopped by Ctrl-C before the ranks saved the run folder")
    results = RunFolder(folder.path).results
    assert (results.state, results.recipe_hash) == ("interrupted", "abc") and "Ctrl-C" in results.reason

    finished = write_finished_run(tmp_path / "finished")  # a run that saved itself is left as it is
    before = finished.file(RunFolder.RESULTS).read_bytes()
    note.write_text(str(finished.path))
    launch._mark_stopped(note, "stopped by Ctrl-C before the ranks saved the run folder")
    assert finished.file(RunFolder.RESULTS).read_bytes() == before
    launch._mark_stopped(
        tmp_path / "no-note", "stopped by Ctrl-C"
    )  # Ctrl-C before rank 0 chose its folder: nothing to mark


def test_notes_are_left_only_under_the_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(launch.NOTES, raising=False)
    assert launch.leave_user_error("zoo: error: x") is False
    monkeypatch.setenv(launch.NOTES, str(tmp_path))
    monkeypatch.setenv("RANK", "3")
    assert launch.leave_user_error("zoo: error: x") is True
    assert (tmp_path / "rank-000003").read_text() == "zoo: error: x"


def test_a_run_whose_rank_was_killed_is_marked_interrupted_naming_the_rank(tmp_path: Path) -> None:
    folder = write_finished_run(tmp_path / "run")
    folder.write_results(RunResults(state="running", recipe_hash="abc"))
    note = tmp_path / launch.RUN_FOLDER
    note.write_text(str(folder.path))
    with pytest.raises(SystemExit):
        launch._report_failed_rank(
            {0: failure(0, launch.RANK_LEFT_EXIT, 5), 1: failure(1, -signal.SIGKILL, 5)}, 2, note
        )
    results = RunFolder(folder.path).results
    assert results.state == "interrupted" and results.reason.startswith("rank 1 was killed (SIGKILL)")
