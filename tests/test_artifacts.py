from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_finished_run

from zoo import _files
from zoo.errors import ZooError
from zoo.runs.folder import HubRecord, RunFolder, RunResults


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.json"
    _files.write_json(target, {"a": 1})
    _files.write_json(target, {"a": 2})
    assert target.read_text() == '{\n  "a": 2\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "config.json"
    _files.write_json(target, {"version": 1})

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_files.os, "fsync", full_disk)
    with pytest.raises(
        ZooError, match="cannot write .*config.json: No space left on device; config.json was left as it was"
    ):
        _files.write_json(target, {"version": 2})
    assert target.read_text() == '{\n  "version": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_run_folder_reads_back_what_it_wrote(tmp_path: Path) -> None:
    run = write_finished_run(tmp_path / "run")
    again = RunFolder.existing(tmp_path / "run")
    assert again.recipe.name == "mnist" and again.label_names == ["0", "1"]
    assert again.results == RunResults(state="finished", recipe_hash="abc", test={"accuracy": 0.5})
    assert again.state == "finished" and again.preprocessing.mean == (0.1307,)
    assert again.hub_record is None and again.checkpoints == []
    record = HubRecord(repo="org/name", revision="main", commit="0" * 40, url="https://hub/org/name")
    run.write_hub_record(record)
    assert again.hub_record == record
    assert json.loads(run.file(RunFolder.RESULTS).read_text()) == {
        "state": "finished",
        "reason": "",
        "recipe_hash": "abc",
        "test": {"accuracy": 0.5},
    }


def test_results_are_strict_json() -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        _files.write_json(Path("never-written.json"), {"loss": float("nan")})
    assert not Path("never-written.json").exists()


@pytest.mark.parametrize(
    ("name", "content", "read", "fragment"),
    [
        (RunFolder.RESULTS, '{"state": "flying"}', "results", "results.json is damaged: state"),
        (RunFolder.RESULTS, '{"state": "finished", "test": NaN}', "results", "NaN is not JSON"),
        (RunFolder.RESULTS, "[1, 2]", "results", "results.json is damaged"),
        (RunFolder.CONFIG, '{"zoo": {}, "label_names": "ab"}', "label_names", "label_names must be a non-empty list"),
        (RunFolder.CONFIG, '{"label_names": ["a"]}', "label_names", "was not written by zoo"),
        (RunFolder.CONFIG, '{"zoo": {}, "label_names": ["a"], "pretrained_cfg": 3}', "preprocessing", "pretrained_cfg"),
        (RunFolder.RECIPE, "name = [", "recipe", "recipe.toml is damaged"),
        (RunFolder.RECIPE, 'name = "x"', "recipe", "missing required key 'model'"),
        (RunFolder.HUB_RECORD, '{"repo": 1}', "hub_record", "hub.json is damaged"),
    ],
)
def test_damaged_files_are_one_line_errors_naming_them(
    tmp_path: Path, name: str, content: str, read: str, fragment: str
) -> None:
    run = write_finished_run(tmp_path / "run")
    run.file(name).write_text(content)
    with pytest.raises(ZooError, match=re.escape(fragment)) as caught:
        getattr(RunFolder(run.path), read)
    assert "\n" not in str(caught.value)


def test_missing_truncated_and_misplaced_files(tmp_path: Path) -> None:
    run = write_finished_run(tmp_path / "run")
    run.file(RunFolder.RESULTS).write_text('{"state": "runn')  # cut short: zoo's own writes never leave this
    with pytest.raises(ZooError, match="results.json is corrupted: Unterminated string"):
        _ = run.state
    run.file(RunFolder.RESULTS).unlink()
    assert run.results is None and run.state == "unknown"
    run.file(RunFolder.WEIGHTS).mkdir()
    with pytest.raises(ZooError, match="model.safetensors is a folder; it should be a file"):
        run.weights()
    with pytest.raises(ZooError, match="run folder not found"):
        RunFolder.existing(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooError, match="is not a zoo run folder"):
        RunFolder.existing(tmp_path / "empty")


def test_holding_names_the_run_a_path_lies_in(tmp_path: Path) -> None:
    run = write_finished_run(tmp_path / "runs" / "a")
    assert RunFolder.holding(run.path).path == run.path
    assert RunFolder.holding(run.path / "checkpoints" / "step-1").path == run.path
    assert RunFolder.holding(tmp_path / "runs") is None and RunFolder.holding(tmp_path / "elsewhere") is None
    project = tmp_path / "project"  # a project's own config.json (or results.json) at its root makes no run
    (project / "deploy").mkdir(parents=True)
    (project / "config.json").write_text("{}")
    assert RunFolder.holding(project / "deploy") is None
    (project / "results.json").write_text("{}")
    assert RunFolder.holding(project / "deploy").path == project  # results.json beside config.json: a run's files


def test_weights_files_are_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    """safetensors orders its metadata differently from process to process; zoo's files must not differ."""
    script = (
        "import sys, torch; from zoo.runs.folder import RunFolder; "
        "RunFolder(sys.argv[1]).write_weights({'b': torch.arange(3.0), 'a': torch.ones(2, 2)}, "
        "{'label_names': '[\"0\"]', 'recipe_hash': 'abc', 'format': 'pt', 'zeta': 'z'})"
    )
    written = []
    for index in range(4):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / str(index))], check=True)
        written.append((tmp_path / str(index) / "model.safetensors").read_bytes())
    assert len(set(written)) == 1
    loaded = RunFolder(tmp_path / "0").weights()
    assert torch.equal(loaded["b"], torch.arange(3.0)) and torch.equal(loaded["a"], torch.ones(2, 2))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0" / "model.safetensors"), "pt") as opened:
        assert opened.metadata() == {"label_names": '["0"]', "recipe_hash": "abc", "format": "pt", "zeta": "z"}
