"""The logger seam: metrics.jsonl and TensorBoard behind ``zoo.loggers``, the fan-out, and every logger's contract."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import BROKEN_MODULE, RECIPES, assert_user_error, make_distribution, make_hostile, zoo_command

import zoo
from zoo.config import recipe as recipes
from zoo.errors import ZooError
from zoo.plugins import _registry as registry
from zoo.plugins.contracts import ContractError
from zoo.runs.folder import RunFolder
from zoo.training.loggers.base import MetricLogger
from zoo.training.loggers.fan_out import Loggers, create_loggers
from zoo.training.loggers.jsonl import JsonlLogger
from zoo.training.loggers.tensorboard import TensorBoardLogger
from zoo.training.loop import Trainer
from zoo.training.setup import build_run

TINY = ["data.classes=[0,1]", "data.per_class=24", "data.val_split=0.2", "data.batch_size=8", "train.precision=fp32"]
RECIPE = recipes.load(RECIPES / "mnist.toml", ["name=tiny", "optim.lr=0.01"]).to_dict()  # as a run passes it


def replay(logger: MetricLogger, history: list[dict[str, Any]]) -> None:
    """Log each of the loop's epoch records, as the loop will through the seam."""
    for record in history:
        metrics = {key: value for key, value in record.items() if key not in ("epoch", "step")}
        logger.log(metrics, record["step"], record["epoch"])


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_the_loop_logs_each_epoch_and_every_log_every_steps(mnist_dir: Path, tmp_path: Path) -> None:
    """metrics.jsonl holds the loop's epoch records byte for byte as zoo always wrote them; TensorBoard
    plots the epochs against the epoch and the running loss every ``log_every`` steps against the step."""
    overrides = [*TINY, "train.epochs=2", "train.log_every=2", "train.tensorboard=true"]
    trainer = Trainer(build_run(recipes.load(RECIPES / "mnist.toml", overrides), progress=False), RunFolder(tmp_path))
    assert trainer.fit(progress=False) == ("finished", "")
    assert len(trainer.history) == 2
    written = "".join(json.dumps(record, allow_nan=False) + "\n" for record in trainer.history)
    assert (tmp_path / RunFolder.METRICS).read_text() == written
    logged = scalars(tmp_path / RunFolder.TENSORBOARD)
    assert [step for step, _ in logged["val/accuracy"]] == [1, 2]
    assert logged["train/loss"] == [(r["epoch"], pytest.approx(r["train_loss"])) for r in trainer.history]
    assert [step for step, _ in logged["step/train/loss"]] == list(range(2, trainer.step + 1, 2))


def epoch_record(epoch: int, step: int, loss: float) -> dict[str, Any]:
    return {"epoch": epoch, "step": step, "train_loss": loss, "lr": 0.1, "val_accuracy": 1 - loss}


def test_jsonl_resumed_keeps_the_checkpointed_epochs_and_replaces_the_rest(tmp_path: Path) -> None:
    first = JsonlLogger()
    first.start(RECIPE, tmp_path, 0, [])
    replay(first, [epoch_record(1, 10, 0.5), epoch_record(2, 20, 0.25), epoch_record(3, 30, 0.125)])
    first.log({"train_loss": 0.3}, 25)  # a mid-epoch record: not an epoch, not in metrics.jsonl
    lines = (tmp_path / RunFolder.METRICS).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]

    # Killed after epoch 3 was logged, resumed from the checkpoint at the end of epoch 2, whose
    # records are the truth: the file itself may have been damaged meanwhile.
    (tmp_path / RunFolder.METRICS).write_text('{"step": 1, "epoch": 1, "train_loss": [')
    resumed = JsonlLogger()
    resumed.start(RECIPE, tmp_path, 20, [epoch_record(1, 10, 0.5), epoch_record(2, 20, 0.25)])
    replay(resumed, [epoch_record(3, 30, 0.0625), epoch_record(4, 40, 0.03125)])
    again = (tmp_path / RunFolder.METRICS).read_text().splitlines()
    assert again[:2] == lines[:2]  # byte for byte
    assert [json.loads(line) for line in again[2:]] == [epoch_record(3, 30, 0.0625), epoch_record(4, 40, 0.03125)]

    fresh = JsonlLogger()  # a new run starts from nothing, whatever the folder held
    fresh.start(RECIPE, tmp_path, 0, [])
    replay(fresh, [epoch_record(1, 5, 0.9)])
    assert [json.loads(line) for line in (tmp_path / RunFolder.METRICS).read_text().splitlines()] == [
        epoch_record(1, 5, 0.9)
    ]


def test_tensorboard_logs_mid_epoch_records_against_the_step(tmp_path: Path) -> None:
    logger = TensorBoardLogger()
    logger.start(RECIPE, tmp_path, 0, [])
    logger.log({"train_loss": 0.5, "lr": 0.1}, 7)
    logger.log({"train_loss": 0.4}, 10, epoch=1)
    logger.finish({"state": "finished"}, [])
    assert scalars(tmp_path / RunFolder.TENSORBOARD) == {
        "step/train/loss": [(7, 0.5)],
        "step/lr": [(7, pytest.approx(0.1))],
        "train/loss": [(1, pytest.approx(0.4))],
    }


@pytest.mark.parametrize("backend", ["tensorboard", "mlflow", "wandb"])
def test_a_backend_not_installed_is_one_line_before_training(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None)
    with pytest.raises(ZooError, match=rf"pip install 'zoo\[{backend}\]'"):
        create_loggers([backend], {})


class Recording:
    def __init__(self, fail_in: str = "") -> None:
        self.fail_in = fail_in
        self.calls: list[str] = []

    def _call(self, method: str) -> None:
        self.calls.append(method)
        if method == self.fail_in:
            raise ConnectionError("tracking server down")

    def start(self, recipe: Mapping[str, Any], run: Path, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        self._call("start")

    def log(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        self._call("log")

    def finish(self, results: Mapping[str, Any], files: Sequence[Path]) -> None:
        self._call("finish")


def drive(loggers: Loggers, run: Path) -> None:
    loggers.start(RECIPE, run, 0, [])
    loggers.log({"train_loss": 0.5}, 1, 1)
    loggers.log({"train_loss": 0.4}, 2, 2)
    loggers.finish({"state": "finished"}, [])


def test_a_failing_third_party_logger_warns_once_and_the_others_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flaky, steady = Recording(fail_in="log"), Recording()
    drive(Loggers({"jsonl": JsonlLogger(), "flaky": flaky, "steady": steady}), tmp_path)
    assert flaky.calls == ["start", "log"]  # left out after its failure
    assert steady.calls == ["start", "log", "log", "finish"]
    assert len((tmp_path / RunFolder.METRICS).read_text().splitlines()) == 2
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        "zoo: the flaky logger failed in log (ConnectionError: tracking server down); the run goes on without it"
    ]


def test_the_jsonl_logger_and_user_mistakes_are_never_silenced(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError):
        drive(Loggers({"jsonl": Recording(fail_in="log")}), tmp_path)

    class Misconfigured(Recording):
        def start(self, recipe: Mapping[str, Any], run: Path, step: int, history: Sequence[Mapping[str, Any]]) -> None:
            raise ZooError("log.mlflow.tracking_uri: not a URI")

    with pytest.raises(ZooError, match="tracking_uri"):
        drive(Loggers({"mlflow": Misconfigured()}), tmp_path)


def test_loggers_are_chosen_by_name_with_jsonl_always_first() -> None:
    assert list(create_loggers(["tensorboard", "jsonl", "tensorboard"], {}).active) == ["jsonl", "tensorboard"]
    with pytest.raises(ZooError, match=r"recipe.toml: log.to: unknown logger 'tensorbord'.*tensorboard"):
        create_loggers(["tensorbord"], {}, "recipe.toml")
    with pytest.raises(ZooError, match=r"recipe.toml: log.csv.bogus: not an argument.*filename"):
        create_loggers(["csv"], {"csv": {"bogus": 1}}, "recipe.toml")


def test_list_loggers_holds_the_builtins_and_the_example_plugin() -> None:
    assert {"jsonl", "tensorboard", "csv"} <= set(zoo.list_loggers())
    assert registry.get("logger", "jsonl").provider == "zoo"
    assert registry.get("logger", "tensorboard").provider == "zoo"
    assert registry.get("logger", "csv").provider == "zoo-shapes"
    assert all(p.description for p in registry.plugins("logger"))


def test_a_logger_registered_in_process_is_created_by_name() -> None:
    @zoo.register_logger("recording")
    def recording() -> Recording:
        """Records what it was told."""
        return Recording()

    try:
        assert "recording" in zoo.list_loggers()
        assert isinstance(zoo.create_logger("recording"), Recording)
    finally:
        registry.unregister("logger", "recording")


def test_a_logger_factory_that_returns_no_logger_is_named_in_one_line() -> None:
    @zoo.register_logger("not_a_logger")
    def not_a_logger() -> object:
        """Returns something without start, log and finish."""
        return object()

    try:
        with pytest.raises(ContractError, match="logger plugin 'not_a_logger' breaks the logger contract"):
            create_loggers(["not_a_logger"], {})
    finally:
        registry.unregister("logger", "not_a_logger")


def test_only_a_started_logger_is_finished(tmp_path: Path) -> None:
    """A run that fails before its first step (or whose logger failed in start) finishes no logger
    that never started: a tracker would close a run it never opened."""
    never, failing, steady = Recording(), Recording(fail_in="start"), Recording()
    Loggers({"never": never}).finish({"state": "failed"}, [])
    loggers = Loggers({"failing": failing, "steady": steady})
    loggers.start(RECIPE, tmp_path, 0, [])
    loggers.finish({"state": "failed"}, [])
    assert (never.calls, failing.calls, steady.calls) == ([], ["start"], ["start", "finish"])


def test_a_broken_logger_plugin_is_listed_reported_and_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = make_distribution(
        tmp_path / "site", "broken-plugin", {"zoo.loggers": {"broken_log": "broken_plugin:net"}}, BROKEN_MODULE
    )
    monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    assert "broken_log" in zoo.list_loggers()
    results = {p.name: error for p, error in registry.load_all("logger")}
    assert "plugin is broken on purpose" in str(results["broken_log"])
    assert results["jsonl"] is None and results["tensorboard"] is None
    with pytest.raises(ZooError, match="log.to: logger plugin 'broken_log' from broken-plugin.*failed to load"):
        create_loggers(["broken_log"], {})


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("name", sorted({p.name for p in registry.plugins("logger")}))
def test_every_logger_plugin_keeps_the_logger_contract(name: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / RunFolder.RESULTS).write_text('{"state": "finished"}')
    outside = files_under(tmp_path) - files_under(run)
    # A tracker's own store lies where its user points it (conftest: beside the test's folder).
    arguments = {"mlflow": {"artifact_location": str(tmp_path.with_name(tmp_path.name + "-trackers"))}}
    for resume_step in (0, 20):  # a new run, then the same run resumed
        logger = registry.instantiate("logger", name, arguments.get(name, {}))
        assert isinstance(logger, MetricLogger), f"logger {name} lacks start, log or finish"
        logger.start(RECIPE, run, resume_step, [epoch_record(1, 20, 0.4)] if resume_step else [])
        logger.log({"train_loss": 0.5, "lr": 0.01}, 10)
        logger.log({"train_loss": 0.4, "val_accuracy": 0.9, "images_per_second": 1e3}, 20, 1)
        logger.log({"train_loss": 0.3, "val_accuracy": 0.95, "images_per_second": 1e3}, 40, 2)
        logger.finish({"state": "finished", "test": {"accuracy": 0.9}}, [run / RunFolder.RESULTS])
    assert files_under(tmp_path) - files_under(run) == outside, f"logger {name} wrote outside the run folder"


def test_log_settings_leave_the_recipe_hash_and_the_shared_recipe_alone() -> None:
    plain = recipes.load(RECIPES / "mnist.toml")
    logged = recipes.load(RECIPES / "mnist.toml", ['log.to=["csv"]', 'log.csv={filename = "m.csv"}'])
    assert logged.logger_names() == ["csv"] and logged.log.arguments() == {"csv": {"filename": "m.csv"}}
    assert logged.hash == plain.hash  # --resume and the recipe: cache see the same weights' recipe
    assert logged.shareable().log.to == []  # a tracker's server or project is not the model's business
    assert recipes.load(RECIPES / "mnist.toml", ["train.tensorboard=true"]).logger_names() == ["tensorboard"]


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (['log.to=["nope"]'], ("log.to", "nope")),
        (['log.to=["csv"]', "log.csv={bogus = 1}"], ("log.csv", "bogus")),
        (['log.csv={filename = "m.csv"}'], ("log.csv", "log.to does not name")),
    ],
)
def test_a_log_table_mistake_is_one_line_before_anything_runs(
    overrides: list[str], fragments: tuple[str, ...], tmp_path: Path
) -> None:
    result = zoo_command("run", str(RECIPES / "mnist.toml"), *overrides, f"output.dir={tmp_path / 'run'}")
    assert_user_error(result, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_plugin_logger_through_zoo_run_and_resume_with_other_loggers(mnist_dir: Path, tmp_path: Path) -> None:
    """The example plugin's csv logger, chosen by the recipe, gets every epoch; --resume may change where it logs."""
    run_folder = tmp_path / "run"
    args = [str(RECIPES / "mnist.toml"), *TINY, "train.epochs=1", f"output.dir={run_folder}"]
    first = zoo_command("run", *args, 'log.to=["csv"]')
    assert first.returncode == 0, first.stderr
    rows = list(csv.DictReader((run_folder / "metrics.csv").open()))
    assert {row["name"] for row in rows if row["epoch"] == "1"} >= {"train_loss", "val_accuracy", "lr"}
    (run_folder / RunFolder.METRICS).write_text('{"step": 1, "epoch": 1, "train_loss": [')  # damaged meanwhile
    where = ["log.to=[]", "train.tensorboard=true", "train.log_every=3"]  # where it logs may change, not the weights
    again = zoo_command("run", *args[:-2], "train.epochs=2", "--resume", str(run_folder), *where)
    assert again.returncode == 0, again.stderr
    lines = (run_folder / RunFolder.METRICS).read_text().splitlines()  # the checkpoint's epoch, then the new one
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert [step for step, _ in scalars(run_folder / RunFolder.TENSORBOARD)["val/accuracy"]] == [2]


@pytest.mark.slow
def test_under_nproc_rank_0_alone_logs(mnist_dir: Path, tmp_path: Path) -> None:
    run_folder = tmp_path / "run"
    result = zoo_command(
        "run", "--nproc", "2", str(RECIPES / "mnist.toml"), *TINY, "train.epochs=1", "train.log_every=1",
        'log.to=["csv"]', f"output.dir={run_folder}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((run_folder / "metrics.csv").open()))
    names = [(row["step"], row["epoch"], row["name"]) for row in rows]
    assert len(names) == len(set(names)) > 0  # one rank's rows: the other's would repeat every key


def test_zoo_list_loggers_shows_the_builtins_and_the_plugin() -> None:
    result = zoo_command("list", "loggers")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert {"jsonl", "tensorboard", "csv"} <= rows and "mnist_cnn" not in rows


@pytest.mark.parametrize("kind", ["link outside", "dangling link", "fifo", "a file"])
def test_tensorboard_never_writes_through_what_sits_at_its_folder(kind: str, tmp_path: Path) -> None:
    """A --resume whose RUN/tensorboard became a link (or a file) writes a real folder inside the run."""
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    if kind == "link outside":
        (run / RunFolder.TENSORBOARD).symlink_to(outside)
    else:
        make_hostile(run / RunFolder.TENSORBOARD, kind, outside)
    logger = TensorBoardLogger()
    logger.start(RECIPE, run, 10, [epoch_record(1, 10, 0.5)])
    logger.log({"train_loss": 0.25}, 20, 2)
    logger.finish({"state": "finished"}, [])
    assert not list(outside.iterdir())
    events = run / RunFolder.TENSORBOARD
    assert events.is_dir() and not events.is_symlink() and scalars(events)["train/loss"] == [(2, 0.25)]
