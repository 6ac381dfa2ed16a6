"""`zoo tune`: the [tune] table checked, trials as run folders, pruning, a killed study continued, best.toml.

Trials are tiny runs of the zoo-shapes plugin's synthetic dataset.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import REPO, assert_user_error, make_hostile, process_state, write_finished_run, zoo_command

from zoo import _locking as locking
from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.errors import ZooError
from zoo.tuning.space import check_metric
from zoo.tuning.study import tune

SPACE = '{ "optim.lr" = { low = 1e-3, high = 1e-1, log = true }, "model.args.hidden" = [8, 16] }'


def write_recipe(folder: Path, tune_table: str = f"trials = 3\nspace = {SPACE}\n", epochs: int = 2) -> Path:
    path = folder / "tiny.toml"
    path.write_text(
        f'extends = "{REPO / "plugins" / "zoo-shapes" / "shapes.toml"}"\nname = "tiny"\n'
        f"[data]\nbatch_size = 32\n[data.args]\nsamples = 150\n[train]\nepochs = {epochs}\n[tune]\n{tune_table}"
    )
    return path


BAD_TABLES = {
    "unknown space key": (
        f"space = {SPACE.replace('optim.lr', 'optim.lrr')}",
        ["tune.space", "did you mean 'optim.lr'"],
    ),
    "a value the schema refuses": ('space = { "optim.lr" = { low = 1e-3, high = 100.0 } }', ["optim.lr=100.0", "10"]),
    "a choice of the wrong type": ('space = { "data.batch_size" = [16, "big"] }', ['data.batch_size="big"']),
    "a choice no member of a union takes": (  # the value as TOML writes it, as the override it was tried as
        'space = { "train.channels_last" = ["auto", "sometimes"] }',
        ['tune.space: train.channels_last="sometimes": ', "Input should be a valid boolean or 'auto'"],
    ),
    "an unordered range": ('space = { "optim.lr" = { low = 0.1, high = 0.01 } }', ["low must be less than high"]),
    "log from zero": ('space = { "optim.lr" = { low = 0.0, high = 0.1, log = true } }', ["log = true needs low > 0"]),
    "the study's own key": ('space = { "output.dir" = ["a", "b"] }', ["output.dir is not searched"]),
    "an empty space": ("space = {}", ["tune.space"]),
    "a misspelt tune key": (f"trails = 3\nspace = {SPACE}", ["did you mean 'tune.trials'"]),
    "a metric that is not monitored": (f'metric = "accuracy"\nspace = {SPACE}', ["tune.metric"]),
    "a direction against the metric": (f'metric = "val_loss"\ndirection = "maximize"\nspace = {SPACE}', ["lower"]),
    "a multi_label metric of single-label data": (
        f'metric = "val_mAP"\nspace = {SPACE}',
        ["tune.metric = val_mAP is a multi_label run's metric", "dataset 'shapes' gives one label an image"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_a_bad_tune_table_is_one_line_and_runs_nothing(tmp_path: Path, case: str) -> None:
    table, fragments = BAD_TABLES[case]
    result = CliRunner().invoke(cli, ["tune", str(write_recipe(tmp_path, table + "\n"))])
    assert_user_error(result, *fragments)
    assert not (tmp_path / "studies").exists()


def test_val_mAP_as_the_tune_metric_follows_the_recipes_task(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, f'metric = "val_mAP"\nspace = {SPACE}\n')
    multi = recipes.load(path, ["task=multi_label"])  # single-label data turned into label sets: mAP is measured
    assert multi.tune is not None
    check_metric(multi, multi.tune)
    single = recipes.load(path, ["task=single_label"])
    assert single.tune is not None
    with pytest.raises(ZooError, match=r'^tune.metric = val_mAP .*the recipe sets task = "single_label"'):
        check_metric(single, single.tune)


def test_a_recipe_without_tune_is_refused_and_zoo_run_leaves_tune_aside(tmp_path: Path) -> None:
    plain = tmp_path / "plain.toml"
    plain.write_text(f'extends = "{REPO / "plugins" / "zoo-shapes" / "shapes.toml"}"\nname = "plain"\n')
    assert_user_error(CliRunner().invoke(cli, ["tune", str(plain)]), "has no [tune] table")
    with_tune = recipes.load(write_recipe(tmp_path))
    assert with_tune.tune is not None and with_tune.tune.trials == 3
    assert with_tune.hash == recipes.load(plain, ["name=tiny", "data.batch_size=32", "data.args.samples=150",
                                                  "train.epochs=2"]).hash  # fmt: skip


def test_tune_metric_takes_every_value_of_train_monitor(tmp_path: Path) -> None:
    # A multi-label run's default monitor, val_mAP, is a metric its study can optimise.
    for metric in ("val_accuracy", "val_f1", "val_mAP", "val_loss", "train_loss"):
        tune_table = recipes.load(write_recipe(tmp_path, f'metric = "{metric}"\nspace = {SPACE}\n')).tune
        assert tune_table is not None and tune_table.metric == metric


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_a_pruned_trial_stops_and_its_run_folder_says_pruned(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, f"trials = 1\nspace = {SPACE}\n", epochs=30)
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a script's `zoo tune &` starts: the trial takes it
    try:
        result = tune(path, study_dir=tmp_path / "study", pruner=AlwaysPrune())
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert [trial.state for trial in result.trials] == ["pruned"] and result.best is None
    results = json.loads((tmp_path / "study" / "trial-0000" / "results.json").read_text())
    assert results["state"] == "interrupted" and results["reason"].startswith("pruned by the study after epoch 1")
    epochs = (tmp_path / "study" / "trial-0000" / "metrics.jsonl").read_text().splitlines()
    assert len(epochs) < 30  # stopped, not run to the end
    assert not (tmp_path / "study" / "best.toml").exists()
    other = write_recipe(tmp_path, 'trials = 2\nspace = { "optim.lr" = [0.01, 0.02] }\n')
    with pytest.raises(ZooError, match="holds a study of another search"):  # continued only as it began
        tune(other, study_dir=tmp_path / "study")
    with pytest.raises(ZooError, match="overrides none"):
        tune(path, ["optim.weight_decay=0.1"], study_dir=tmp_path / "study")


def completed(study: Path) -> list[int]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(study / "study.journal")))
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    return [trial.number for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]


@pytest.mark.slow
def test_three_trials_give_run_folders_a_table_best_toml_and_a_plot(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, f'trials = 3\npruner = "none"\nspace = {SPACE}\n')
    result = zoo_command("tune", str(path), "--study", str(tmp_path / "study"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = tmp_path / "study"
    assert completed(study) == [0, 1, 2]
    table = [line for line in result.stdout.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])]
    assert len(table) == 3 and all("complete" in line for line in table)
    values = {}
    for number in range(3):
        run = json.loads((study / f"trial-{number:04d}" / "results.json").read_text())
        assert run["state"] == "finished" and run["monitor"] == "val_accuracy"
        values[number] = run["kept_value"]
    best = max(values, key=lambda number: values[number])
    assert f"best: trial {best}" in result.stdout
    best_recipe = recipes.load(study / "best.toml")
    trial_recipe = recipes.load(study / f"trial-{best:04d}" / "recipe.toml")
    assert best_recipe.optim.lr == trial_recipe.optim.lr and best_recipe.output.dir is None
    assert best_recipe.model.args == trial_recipe.model.args
    assert zoo_command("run", str(study / "best.toml"), "--dry-run", cwd=tmp_path).returncode == 0
    assert (study / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = zoo_command("tune", str(path), "--study", str(study), cwd=tmp_path)  # the study is complete
    assert again.returncode == 0 and "0 trial(s) run now, 3" in again.stdout


@pytest.mark.slow
def test_a_killed_study_continues_and_loses_only_the_trial_in_flight(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, f'trials = 3\npruner = "none"\nspace = {SPACE}\n', epochs=3)
    study = tmp_path / "study"
    command = [str(Path(sys.executable).with_name("zoo")), "tune", str(path), "--study", str(study)]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not (study / "trial-0001" / "metrics.jsonl").exists():  # trial 0 done, trial 1 training
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    first = (study / "trial-0000" / "model.safetensors").stat().st_mtime_ns
    assert completed(study) == [0]

    result = zoo_command("tune", str(path), "--study", str(study), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "trial 1 was cut short" in result.stdout
    assert completed(study) == [0, 2, 3]  # trial 0 kept as it was, trial 1 lost, two new ones
    assert (study / "trial-0000" / "model.safetensors").stat().st_mtime_ns == first
    lost = json.loads((study / "trial-0001" / "results.json").read_text())
    assert lost["state"] == "failed" and "the study stopped during this trial" in lost["reason"]


@pytest.mark.slow
def test_a_trial_stops_with_its_study_killed_alone_and_the_rerun_counts_it_failed(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, f'trials = 1\npruner = "none"\nspace = {SPACE}\n', epochs=30)
    study = tmp_path / "study"
    command = [str(Path(sys.executable).with_name("zoo")), "tune", str(path), "--study", str(study)]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (study / "trial-0000" / "metrics.jsonl").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    trial_pid = json.loads((study / "trial-0000" / ".zoo.lock").read_text())["pid"]
    process.kill()  # the study alone, not its process group
    process.wait()
    deadline = time.monotonic() + 60
    while process_state(trial_pid) not in ("Z", "X", None) and time.monotonic() < deadline:  # gone, or a zombie
        time.sleep(0.05)
    stopped = json.loads((study / "trial-0000" / "results.json").read_text())
    assert stopped["state"] == "interrupted"  # stopped with its study, not trained on to "finished"
    assert not (study / "trial-0000" / ".zoo.lock").exists()

    result = zoo_command("tune", str(path), "--study", str(study), "--timeout", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "trial 0 was cut short" in result.stdout
    lost = json.loads((study / "trial-0000" / "results.json").read_text())
    assert lost["state"] == "failed" and "the study stopped during this trial" in lost["reason"]


def test_a_rerun_refuses_a_study_whose_trial_still_holds_its_run_folder(tmp_path: Path) -> None:
    path = write_recipe(tmp_path)
    study = tmp_path / "study"
    tune(path, study_dir=study, timeout=0)  # the study begun, no trial run
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(study / "study.journal")))
    optuna.load_study(study_name="tiny", storage=storage).ask()  # trial 0 running, as a study killed left it
    held = locking.claim(study / "trial-0000")  # its process lives on (a trial that outlived its study)
    try:
        with pytest.raises(ZooError, match=r"^the study's trial 0 is still running: .* is in use by process"):
            tune(path, study_dir=study)
        trials = optuna.load_study(study_name="tiny", storage=storage).trials
        assert [trial.state for trial in trials] == [optuna.trial.TrialState.RUNNING]  # not failed, none run
    finally:
        held.release()


def test_without_the_extra_installed_the_command_says_which(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    assert_user_error(CliRunner().invoke(cli, ["tune", str(write_recipe(tmp_path))]), "pip install 'zoo[tune]'")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert_user_error(CliRunner().invoke(cli, ["serve", str(tmp_path)]), "needs uvicorn", "pip install 'zoo[serve]'")


@pytest.mark.slow
def test_nproc_runs_each_trial_under_torchrun_and_pruning_stops_every_rank(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, f'trials = 1\npruner = "none"\nspace = {SPACE}\n')
    result = zoo_command("tune", str(path), "--study", str(tmp_path / "whole"), "--nproc", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "whole" / "trial-0000" / "results.json").read_text())
    assert results["state"] == "finished" and results["world_size"] == 2 and results["ranks_agree"] is True

    long = write_recipe(tmp_path, f"trials = 1\nspace = {SPACE}\n", epochs=30)
    pruned = tune(long, study_dir=tmp_path / "pruned", nproc=2, pruner=AlwaysPrune())
    assert [trial.state for trial in pruned.trials] == ["pruned"]
    results = json.loads((tmp_path / "pruned" / "trial-0000" / "results.json").read_text())
    assert results["state"] == "interrupted" and results["reason"].startswith("pruned by the study after epoch 1")


@pytest.mark.parametrize("kind", ["link outside", "dangling link", "fifo", "folder"])
def test_a_hostile_study_journal_is_refused_in_one_line(tmp_path: Path, kind: str) -> None:
    study, outside = tmp_path / "study", tmp_path / "outside"
    study.mkdir()
    outside.mkdir()
    (outside / "precious.json").write_text("{}")
    make_hostile(study / "study.journal", kind, outside)
    result = CliRunner().invoke(cli, ["tune", str(write_recipe(tmp_path)), "--study", str(study)])
    assert_user_error(result, "study.journal")
    assert (outside / "precious.json").read_text() == "{}" and not (outside / "made-by-zoo").exists()
    assert not list(study.glob("trial-*"))


def test_a_fractional_step_between_integer_bounds_is_refused_up_front(tmp_path: Path) -> None:
    table = 'space = { "data.batch_size" = { low = 8, high = 16, step = 0.5 } }\n'
    result = zoo_command("tune", str(write_recipe(tmp_path, table)), "--study", str(tmp_path / "s1"), cwd=tmp_path)
    assert_user_error(result, "tune.space: data.batch_size", "step = 0.5", "integer step")
    assert not (tmp_path / "s1").exists()


def test_a_value_a_trial_draws_that_the_recipe_refuses_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zoo.tuning.study as study_module

    monkeypatch.setattr(study_module, "check_space", lambda *args: None)  # a space whose bounds pass, its inside not
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("optuna").addHandler(handler)
    try:
        table = 'space = { "data.batch_size" = { low = 8, high = 16, step = 0.5 } }\n'
        result = CliRunner().invoke(cli, ["tune", str(write_recipe(tmp_path, table)), "--study", str(tmp_path / "s1"),
                                          "--trials", "2"])  # fmt: skip
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    line = assert_user_error(result, "trial 0 drew data.batch_size=", "Input should be a valid integer")
    assert "Traceback" not in line and not [record for record in records if record.levelno >= logging.WARNING]
    assert not list((tmp_path / "s1").glob("trial-*"))  # refused before its run started


@pytest.mark.parametrize("holding", ["a finished run", "an unrelated file"])
def test_a_study_is_not_written_into_a_folder_that_holds_something_else(tmp_path: Path, holding: str) -> None:
    folder = tmp_path / "taken"
    if holding == "a finished run":
        write_finished_run(folder)
    else:
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    result = CliRunner().invoke(cli, ["tune", str(write_recipe(tmp_path)), "--study", str(folder)])
    assert_user_error(result, str(folder), "run folder" if holding == "a finished run" else "notes.txt")
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before


def test_a_timeout_that_runs_out_first_reports_no_trial_run(tmp_path: Path) -> None:
    study = tmp_path / "new" / "study"
    arguments = ["tune", str(write_recipe(tmp_path)), "--study", str(study), "--trials", "2", "--timeout", "0"]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    assert f"0 trial(s) run now, 0 in {study}" in result.stdout
    again = CliRunner().invoke(cli, arguments)  # the study it began is continued, not refused
    assert again.exit_code == 0 and "0 trial(s) run now" in again.stdout
