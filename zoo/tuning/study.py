"""`zoo tune`: an Optuna study over the recipe's ``[tune]`` space, each trial an ordinary `zoo run`.

The study folder holds everything: ``study.journal`` (Optuna's JournalStorage, appended as each
trial starts, reports and ends, so that `zoo tune` run again continues the study and a killed
study loses at most the trial in flight), one run folder per trial (``trial-0000``, ...),
``best.toml`` and ``trials.png``. A trial runs as its own `zoo run` process (under torchrun with
``--nproc``): the study reads the metric from the trial's metrics.jsonl after each epoch, reports it
to the pruner, and stops a trial it prunes as Ctrl-C stops a run; the run folder then says why. A trial
does not outlive its study: on Linux it is stopped (as interrupted) when the study process dies, even
by kill -9, and a study run again refuses to go on while a trial of its still holds its run folder.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _files
from .. import _locking as locking
from .._lifetime import end_with_parent
from ..config import recipe as recipes
from ..config.schema import OutputConfig
from ..config.tune import TuneConfig
from ..errors import ZooError
from ..runs.folder import RunFolder
from ..runs.plots import curves
from ..training.monitor import LOWER_IS_BETTER
from .space import check_metric, check_space, direction, override, suggest, trial_overrides

if TYPE_CHECKING:
    import optuna

JOURNAL = "study.journal"
BEST = "best.toml"
PLOT = "trials.png"
POLL_SECONDS = 0.2  # how often a running trial's metrics.jsonl is read
STOP_SECONDS = 10.0  # after Ctrl-C, how long a trial has to stop by itself before it is asked to


@dataclass
class Trial:
    number: int
    state: str  # Optuna's: complete, pruned, fail, running
    value: float | None
    params: dict[str, Any]
    folder: Path


@dataclass
class StudyResult:
    folder: Path
    metric: str
    trials: list[Trial]
    best: Trial | None
    ran: int  # trials run by this call


def tune(
    path: Path,
    overrides: Sequence[str] = (),
    study_dir: Path | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    nproc: int = 1,
    pruner: optuna.pruners.BasePruner | None = None,
) -> StudyResult:
    """Run (or continue) the study of the recipe at ``path`` until it holds ``trials`` finished or pruned trials
    (``tune.trials`` by default) or ``timeout`` seconds have passed; ``pruner`` replaces ``tune.pruner``'s."""
    import optuna

    recipe = recipes.load(path, overrides)
    if recipe.tune is None:
        raise ZooError(f"{path} has no [tune] table: add one naming the metric and the space to search")
    tune_config = recipe.tune
    sense = direction(tune_config)
    check_space(path, overrides, tune_config)
    check_metric(recipe, tune_config)
    folder = study_dir or Path("studies") / recipe.name
    _check_study_folder(folder)
    claim = locking.claim(folder)
    try:
        # A failed trial is zoo's one line: Optuna would log it again, as a warning with its traceback.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        # Optuna appends to the journal through its path: what is there is checked (and created) first, never a link.
        fix = "remove it: zoo keeps the study there"
        os.close(_files.open_regular(folder / JOURNAL, os.O_RDWR | os.O_CREAT, follow_symlinks=False, fix=fix))
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / JOURNAL)))
        study = optuna.create_study(
            study_name=recipe.name, storage=storage, direction=sense, load_if_exists=True,
            pruner=pruner or _pruner(tune_config),
        )  # fmt: skip
        _check_same_search(study, folder, tune_config, overrides)
        _fail_abandoned(study, storage, folder)
        # Seeded by the trials so far: a continued study draws new values, not the first trials' again.
        study.sampler = optuna.samplers.TPESampler(seed=recipe.train.seed + len(study.trials))
        target = trials or tune_config.trials
        done = sum(trial.state.is_finished() for trial in study.trials if trial.state.name != "FAIL")
        before = len(study.trials)
        if target > done:

            def objective(trial: optuna.Trial) -> float:
                return _run_trial(trial, path, overrides, tune_config, folder, nproc)

            study.optimize(objective, n_trials=target - done, timeout=timeout)
        result = _summary(study, folder, tune_config, len(study.trials) - before)  # none when --timeout ran out
        if result.best is not None:
            _write_best(result.best.folder, folder / BEST)
        _plot(result, folder / PLOT)
        return result
    finally:
        claim.release()


def _check_study_folder(folder: Path) -> None:
    """A study goes into a new or empty folder, or continues the one it finds: never into a run or other files."""
    run = RunFolder.holding(folder.resolve())
    if run is not None or RunFolder(folder).is_run:
        raise ZooError(f"--study {folder} is (in) the run folder {run or folder}: give the study a folder of its own")
    if folder.is_dir() and not (folder / JOURNAL).exists():
        others = sorted(entry.name for entry in folder.iterdir() if entry.name != locking.LOCK_NAME)
        if others:
            raise ZooError(
                f"--study {folder} holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''} but no {JOURNAL}: "
                "give the study an empty or new folder"
            )


def _pruner(tune: TuneConfig) -> optuna.pruners.BasePruner:
    import optuna

    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)


def _check_same_search(study: optuna.Study, folder: Path, tune: TuneConfig, overrides: Sequence[str]) -> None:
    """A study continues only the search it began: the same metric, space and command-line overrides."""
    search = {**tune.model_dump(include={"metric", "space"}, mode="json"), "overrides": list(overrides)}
    began = study.user_attrs.get("search")
    if began is None:
        study.set_user_attr("search", search)
    elif began != search:
        raise ZooError(
            f"{folder} holds a study of another search ({began['metric']} over {', '.join(began['space'])}, "
            f"overrides {' '.join(began.get('overrides', [])) or 'none'}): "
            "give this one another --study folder"
        )


def _fail_abandoned(study: optuna.Study, storage: optuna.storages.BaseStorage, folder: Path) -> None:
    """Trials left running by a study that was killed failed; a trial whose process still holds its run folder
    (one that outlived its study where the kernel cannot stop it with the study) is refused, as it runs on."""
    from optuna.trial import TrialState

    abandoned = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in abandoned:  # all checked before any is marked: a refusal writes nothing
        run_folder = _trial_folder(folder, trial.number)
        if os.path.lexists(run_folder / locking.LOCK_NAME):
            try:
                locking.claim(run_folder).release()  # taken over only from a dead owner
            except ZooError as exc:
                raise ZooError(f"the study's trial {trial.number} is still running: {exc}") from None
    for trial in abandoned:
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        run = RunFolder(_trial_folder(folder, trial.number))
        results = run.results if run.file(RunFolder.RESULTS).is_file() else None
        if results is not None and results.state in ("running", "interrupted"):  # killed, or stopped with the study
            reason = "the study stopped during this trial (zoo tune was killed); the study goes on without it"
            run.write_results(results.model_copy(update={"state": "failed", "reason": reason}))
        print(f"trial {trial.number} was cut short when the study stopped: it counts as failed", flush=True)


def _trial_folder(folder: Path, number: int) -> Path:
    return folder / f"trial-{number:04d}"


def _run_trial(
    trial: optuna.Trial, path: Path, overrides: Sequence[str], tune: TuneConfig, folder: Path, nproc: int
) -> float:
    """One trial: `zoo run` with the trial's values, its metric reported each epoch, pruned when the pruner says."""
    import optuna

    params = {key: suggest(trial, key, spec) for key, spec in tune.space.items()}
    run = RunFolder(_trial_folder(folder, trial.number))
    try:  # a value drawn between bounds that check_space took can still be refused: said here, not by the trial
        recipes.load(path, trial_overrides(overrides, tune, params, run.path))
    except ZooError as exc:
        drawn = " ".join(override(key, value) for key, value in params.items())
        reason = str(exc)
        for key in params:  # the override that failed is named by the message itself
            reason = reason.removeprefix(f"override {key}: ")
        raise ZooError(f"{path}: tune.space: trial {trial.number} drew {drawn}: {reason}") from None
    print(f"trial {trial.number}: {' '.join(override(k, v) for k, v in params.items())} -> {run}", flush=True)
    launch = ["--nproc", str(nproc)] if nproc > 1 else []
    command = [sys.executable, "-m", "zoo", "run", str(path), *trial_overrides(overrides, tune, params, run.path)]
    process = subprocess.Popen([*command, *launch, "--no-progress"], preexec_fn=_stopped_with_the_study())
    reported: set[int] = set()
    pruned_at = None
    try:
        while pruned_at is None:
            finished = process.poll() is not None
            for epoch, value in _epoch_values(run, tune.metric):
                if epoch not in reported:
                    reported.add(epoch)
                    trial.report(value, epoch)
                    if trial.should_prune():
                        pruned_at = (epoch, value)
                        process.send_signal(signal.SIGINT)  # as Ctrl-C: the run saves and says interrupted
                        break
            if finished:
                break
            time.sleep(POLL_SECONDS)
        code = process.wait()
    except BaseException as exc:  # Ctrl-C or a failure of the study: the trial does not outlive it
        if not isinstance(exc, KeyboardInterrupt):  # a terminal's Ctrl-C reached the trial too: once is enough
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            process.wait()
        raise
    if pruned_at is not None:
        epoch, value = pruned_at
        results = run.results
        if results is not None:
            reason = f"pruned by the study after epoch {epoch} ({tune.metric} {value:.4f})"
            run.write_results(results.model_copy(update={"reason": reason}))
        raise optuna.TrialPruned(f"pruned after epoch {epoch}")
    results = run.results if code == 0 else None
    if results is None or results.state != "finished" or results.kept_value is None:
        raise ZooError(f"trial {trial.number} ({run}) did not finish (exit code {code}): the study stops here")
    return results.kept_value


def _stopped_with_the_study() -> Callable[[], None]:
    """Popen's preexec_fn: the trial takes SIGINT as Ctrl-C even where the study ignores it (a script's
    `zoo tune &`: the pruner stops a trial with SIGINT), and on Linux gets SIGTERM (a run's clean stop, as
    interrupted) when the study process dies, even by kill -9, rather than train on beside a rerun's trials."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # looked up before the fork: the child only calls it
    study = os.getpid()

    def stop_with_the_study() -> None:
        libc.signal(signal.SIGINT, signal.SIG_DFL)  # an ignored signal stays ignored across exec
        end_with_parent(study, signal.SIGTERM, libc=libc, watch=False)  # Linux only: exec ends a watching thread

    return stop_with_the_study


def _epoch_values(run: RunFolder, metric: str) -> list[tuple[int, float]]:
    """(epoch, value of ``metric``) for each epoch the trial's metrics.jsonl holds so far."""
    data = _files.read_file(run.file(RunFolder.METRICS), limit=None) if run.path.is_dir() else None
    values = []
    for line in (data or b"").decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # written whole each epoch; a damaged line is skipped, not reported
            continue
        value = record.get(metric) if isinstance(record, dict) else None
        if isinstance(record.get("epoch"), int) and isinstance(value, int | float) and math.isfinite(value):
            values.append((record["epoch"], float(value)))
    return values


def _summary(study: optuna.Study, folder: Path, tune: TuneConfig, ran: int) -> StudyResult:
    trials = [
        Trial(t.number, t.state.name.lower(), t.value if t.value is not None else _last(t), t.params,
              _trial_folder(folder, t.number))
        for t in study.trials
    ]  # fmt: skip
    complete = [trial for trial in trials if trial.state == "complete"]
    best = None
    if complete:
        best = next(trial for trial in complete if trial.number == study.best_trial.number)
    return StudyResult(folder, tune.metric, trials, best, ran)


def _last(trial: optuna.trial.FrozenTrial) -> float | None:
    """A pruned trial's last reported value."""
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def _write_best(trial_folder: Path, path: Path) -> None:
    """The best trial's recipe, which `zoo run` takes as it is (to its own new run folder)."""
    recipe = RunFolder(trial_folder).recipe.model_copy(update={"output": OutputConfig()})
    _files.write_text(path, recipe.to_toml())


def _plot(result: StudyResult, path: Path) -> None:
    """The metric of each trial (a pruned one's last report), and the best so far."""
    scored = [trial for trial in result.trials if trial.value is not None]
    if not scored:
        return
    numbers = [trial.number for trial in scored]
    better = min if result.metric in LOWER_IS_BETTER else max
    best_so_far, best = [], None
    for trial in scored:
        if trial.state == "complete":
            best = trial.value if best is None else better(best, trial.value)
        best_so_far.append(best if best is not None else math.nan)
    series = {"trial": (numbers, [trial.value for trial in scored]), "best so far": (numbers, best_so_far)}
    curves(path, f"{result.metric} over trials", result.metric, series, "trial")
