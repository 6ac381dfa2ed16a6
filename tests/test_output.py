"""What `zoo run` prints, in each form: bars on a terminal, plain lines in a log, --quiet, --log-format json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import RECIPES, zoo_command
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo import _output
from zoo._output import LINE_SECONDS, Progress

TINY = [
    "data.classes=[0,1]",
    "data.per_class=24",
    "data.val_split=0.2",
    "data.batch_size=10",
    "train.precision=fp32",
]  # 48 images: batches of 10, the last filled up


@given(gaps=st.lists(st.floats(min_value=0.0, max_value=25.0), min_size=1, max_size=60))
@settings(max_examples=60, deadline=None)
def test_plain_progress_lines_come_at_most_every_ten_seconds_and_at_the_end(gaps: list[float]) -> None:
    clock = [1000.0]
    printed: list[float] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_output.time, "monotonic", lambda: clock[0])
        patch.setattr("builtins.print", lambda *args, **kwargs: printed.append(clock[0]))
        _output.set_format("lines")
        progress = Progress(len(gaps), "epoch 1/1")
        for gap in gaps:
            clock[0] += gap
            progress.update(1)
        lines_during = list(printed)
        progress.close()
    _output.set_format("auto")
    moments = [1000.0, *lines_during]
    assert all(later - earlier >= LINE_SECONDS for earlier, later in zip(moments, moments[1:]))
    assert len(printed) == len(lines_during) + 1  # the closing line, whatever came before
    due = 0  # a line is due whenever ten seconds passed since the last one
    last = 1000.0
    for now in [1000.0 + sum(gaps[: index + 1]) for index in range(len(gaps))]:
        if now - last >= LINE_SECONDS:
            due, last = due + 1, now
    assert len(lines_during) == due


def run_tiny(tmp_path: Path, *flags: str) -> tuple[str, str]:
    result = zoo_command("run", str(RECIPES / "mnist.toml"), *TINY, "train.epochs=2", "train.log_every=1",
                         f"output.dir={tmp_path / 'run'}", *flags)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout, result.stderr


def test_output_that_is_not_a_terminal_has_plain_lines_and_no_carriage_return(mnist_dir: Path, tmp_path: Path) -> None:
    stdout, stderr = run_tiny(tmp_path)
    assert "\r" not in stdout + stderr
    lines = stdout.splitlines()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    steps = json.loads(metrics[0])["step"]
    closing = [
        line for line in stderr.splitlines() if re.match(r"epoch 1/2: (\d+)/\1 img, ", line)
    ]  # on stderr, as bars
    assert len(closing) == 1 and f"step {steps}, loss " in closing[0] and "img/s" in closing[0]
    assert any(line.startswith("epoch 2/2: train loss") for line in lines)
    assert "CLASS" in stdout and lines[-1].startswith("run folder: ")


def test_quiet_prints_the_result_only(mnist_dir: Path, tmp_path: Path) -> None:
    stdout, _ = run_tiny(tmp_path, "--quiet")
    lines = stdout.splitlines()
    assert len(lines) == 2, stdout
    assert lines[0].startswith("test: accuracy ") and lines[1] == f"run folder: {tmp_path / 'run'} (finished)"


def test_log_format_json_is_one_object_a_line(mnist_dir: Path, tmp_path: Path) -> None:
    stdout, stderr = run_tiny(tmp_path, "--log-format", "json")
    events = [json.loads(line) for line in stdout.splitlines()]  # every line is JSON
    epochs = [event for event in events if event["event"] == "epoch"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [{key: event[key] for key in record} for event, record in zip(epochs, records)] == records
    assert len(epochs) == len(records) == 2
    assert any(event["event"] == "progress" and event["done"] == event["total"] for event in events)
    result = events[-1]
    assert result["event"] == "result" and result["state"] == "finished" and result["folder"] == str(tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["test"]["accuracy"] == on_disk["test"]["accuracy"]
