"""MLflow and W&B behind the logger seam, read back the way their users read them: MlflowClient on a
local sqlite store, and the offline W&B run's own file (no network: conftest keeps both local)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import RECIPES, assert_user_error, make_hostile, zoo_command
from hypothesis import given
from hypothesis import strategies as st

from zoo.config import recipe as recipes
from zoo.runs.folder import RunFolder
from zoo.training.loggers import tracking
from zoo.training.loggers.fan_out import Loggers
from zoo.training.loggers.mlflow import MlflowLogger
from zoo.training.loggers.wandb import WandbLogger
from zoo.training.runner import run as run_recipe

TINY = ["data.classes=[0,1]", "data.per_class=24", "data.val_split=0.2", "data.batch_size=8", "train.precision=fp32"]
RECIPE = recipes.load(RECIPES / "mnist.toml", TINY).to_dict()


def mlflow_client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()  # MLFLOW_TRACKING_URI: conftest's sqlite store


def only_run(experiment: str = "mnist") -> Any:
    client = mlflow_client()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [run.info.run_id for run in runs]
    return runs[0]


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((metric.step, metric.value) for metric in mlflow_client().get_metric_history(run_id, key))


def artifacts(run_id: str) -> set[str]:
    return {entry.path for entry in mlflow_client().list_artifacts(run_id)}


def epochs(run_folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_folder / RunFolder.METRICS).read_text().splitlines()]


def test_mlflow_gets_parameters_tags_metrics_and_files_of_a_run(mnist_dir: Path, tmp_path: Path) -> None:
    run_folder = tmp_path / "run"
    result = zoo_command(
        "run", str(RECIPES / "mnist.toml"), *TINY, "train.epochs=2", "train.log_every=2", 'log.to=["mlflow"]',
        "log.weights=true", f"log.mlflow={{artifact_location = '{tmp_path / 'artifacts'}'}}", f"output.dir={run_folder}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = only_run()
    run_id = run.info.run_id
    assert json.loads((run_folder / RunFolder.TRACKING).read_text()) == {"mlflow": run_id}
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["optim.lr"] == str(RECIPE["optim"]["lr"]) and params["data.batch_size"] == "8"
    assert params["data.classes"] == "[0, 1]" and params["model.backbone"] == "mnist_cnn"
    assert not [key for key in params if key.startswith("log.")]  # where it reports (a URI may hold a password)
    results = json.loads((run_folder / RunFolder.RESULTS).read_text())
    assert run.data.tags["zoo.recipe_hash"] == results["recipe_hash"]
    assert run.data.tags["zoo.backbone"] == "mnist_cnn" and run.data.tags["zoo.dataset"] == "mnist"
    records = epochs(run_folder)
    for key in ("val_accuracy", "train_loss", "images_per_second"):
        assert history(run_id, key) == [(r["step"], pytest.approx(r[key])) for r in records], key
    assert [step for step, _ in history(run_id, "step/train_loss")] == list(range(2, records[-1]["step"] + 1, 2))
    assert history(run_id, "test_accuracy") == [(results["steps"], pytest.approx(results["test"]["accuracy"]))]
    assert {"results.json", "README.md", "loss.png", "model.safetensors"} <= artifacts(run_id)


def test_wandb_offline_run_holds_config_history_summary_and_files(mnist_dir: Path, tmp_path: Path) -> None:
    run_folder = tmp_path / "run"
    result = zoo_command(
        "run", str(RECIPES / "mnist.toml"), *TINY, "train.epochs=2", 'log.to=["wandb"]',
        "log.wandb={project = 'zoo-tests', tags = ['tiny']}", f"output.dir={run_folder}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wandb:" not in result.stdout + result.stderr  # W&B's chatter stays out of zoo's output
    run_id = json.loads((run_folder / RunFolder.TRACKING).read_text())["wandb"]
    [offline] = (run_folder / RunFolder.WANDB / "wandb").glob(f"offline-run-*-{run_id}")
    run = wandb_records(offline)
    [started] = run["run"]
    assert started.project == "zoo-tests" and list(started.tags) == ["tiny"]
    config = {item.key: json.loads(item.value_json) for item in started.config.update}
    results = json.loads((run_folder / RunFolder.RESULTS).read_text())
    assert config["optim.lr"] == RECIPE["optim"]["lr"] and config["zoo.recipe_hash"] == results["recipe_hash"]
    rows = [{item.nested_key[0]: json.loads(item.value_json) for item in row.item} for row in run["history"]]
    logged = [(row["_step"], row["val_accuracy"]) for row in rows if "val_accuracy" in row]
    assert logged == [(r["step"], pytest.approx(r["val_accuracy"])) for r in epochs(run_folder)]
    summary = {}
    for update in run["summary"]:
        summary |= {(item.key or item.nested_key[0]): json.loads(item.value_json) for item in update.update}
    assert summary["test_accuracy"] == pytest.approx(results["test"]["accuracy"]) and summary["state"] == "finished"
    assert {"results.json", "README.md", "loss.png"} <= {path.name for path in (offline / "files").iterdir()}
    assert not (offline / "files" / "model.safetensors").exists()  # log.weights is off


def wandb_records(offline_run: Path) -> dict[str, list[Any]]:
    """The records of an offline run's .wandb file (a LevelDB-style log of W&B's protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    [path] = offline_run.glob("run-*.wandb")
    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    found: dict[str, list[Any]] = {}
    while position + 7 <= len(data):
        room = block - position % block
        checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if room < 7 or (length == 0 and kind == 0):  # a block's padding
            position += room
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or a record's last part
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            which = record.WhichOneof("record_type")
            found.setdefault(which, []).append(getattr(record, which))
            pending = b""
    return found


def drive(logger: Any, run: Path, recipe: dict[str, Any], step: int, epochs: range) -> None:
    logger.start(recipe, run, step, [])
    for epoch in epochs:
        logger.log({"train_loss": 1 / epoch}, epoch * 10 - 5)
        logger.log({"train_loss": 1 / epoch, "val_accuracy": 1 - 1 / (epoch + 1)}, epoch * 10, epoch)
    logger.finish({"state": "finished", "steps": epochs[-1] * 10, "test": {"accuracy": 0.75}}, [])


def test_mlflow_resumed_continues_its_run_and_a_changed_setting_is_a_tag(tmp_path: Path) -> None:
    first = MlflowLogger()
    drive(first, tmp_path, RECIPE, 0, range(1, 3))
    longer = {**RECIPE, "train": {**RECIPE["train"], "epochs": 4}}  # `--resume train.epochs=4`
    again = MlflowLogger()
    drive(again, tmp_path, longer, 20, range(3, 5))
    assert again.run_id == first.run_id == only_run("mnist").info.run_id
    run = mlflow_client().get_run(first.run_id)
    assert run.data.params["train.epochs"] == str(RECIPE["train"]["epochs"])  # MLflow keeps a parameter's first value
    assert run.data.tags["resumed.train.epochs"] == "4" and "resumed.optim.lr" not in run.data.tags
    assert [step for step, _ in history(first.run_id, "val_accuracy")] == [10, 20, 30, 40]
    assert [step for step, _ in history(first.run_id, "step/train_loss")] == [5, 15, 25, 35]


def test_wandb_resumed_continues_its_run(tmp_path: Path) -> None:
    drive(WandbLogger(), tmp_path, RECIPE, 0, range(1, 2))
    run_id = json.loads((tmp_path / RunFolder.TRACKING).read_text())["wandb"]
    drive(WandbLogger(), tmp_path, RECIPE, 10, range(2, 3))
    runs = [wandb_records(run) for run in (tmp_path / RunFolder.WANDB / "wandb").glob("offline-run-*")]
    assert {started.run_id for records in runs for started in records["run"]} == {run_id}  # W&B merges on sync
    steps = {json.loads(item.value_json) for records in runs for row in records.get("history", [])
             for item in row.item if item.nested_key[0] == "_step"}  # fmt: skip
    assert {10, 20} <= steps


@pytest.mark.parametrize("damage", ['{"mlflow": 7}', "{not json", '["a list"]'])
def test_a_damaged_tracking_file_starts_a_new_tracker_run_and_says_so(
    damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = MlflowLogger()
    drive(first, tmp_path, RECIPE, 0, range(1, 2))
    (tmp_path / RunFolder.TRACKING).write_text(damage)
    again = MlflowLogger()
    again.start(RECIPE, tmp_path, 10, [])
    assert again.run_id != first.run_id
    assert json.loads((tmp_path / RunFolder.TRACKING).read_text()) == {"mlflow": again.run_id}
    if damage != '["a list"]':  # a list holds no run id: nothing to warn about
        assert "the mlflow logger starts a new run" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["fifo", "folder", "dangling link", "/dev/zero"])
def test_a_hostile_tracking_file_is_never_read_through_and_is_replaced(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    make_hostile(run / RunFolder.TRACKING, kind, outside)
    logger = MlflowLogger()
    logger.start(RECIPE, run, 10, [])  # a resume: tracking.json is read
    path = run / RunFolder.TRACKING
    assert not any(outside.iterdir()) and logger.run_id
    err = capsys.readouterr().err
    if kind == "folder":  # never removed: the run id is not kept, and the run goes on
        assert path.is_dir() and "a --resume will start a new mlflow run" in err
        return
    assert path.is_file() and not path.is_symlink()
    assert json.loads(path.read_text()) == {"mlflow": logger.run_id}
    if kind != "dangling link":  # a link to a missing file reads as no file: nothing to warn about
        assert "the mlflow logger starts a new run" in err


def test_a_tracker_failing_mid_run_leaves_a_finished_run(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []

    def server_down(self: MlflowLogger, metrics: Any, step: int, epoch: int | None = None) -> None:
        calls.append(step)
        raise ConnectionError("tracking server down")

    monkeypatch.setattr(MlflowLogger, "log", server_down)
    recipe = recipes.load(RECIPES / "mnist.toml", [*TINY, "train.epochs=2", 'log.to=["mlflow"]',
                                                   f"output.dir={tmp_path / 'run'}"])  # fmt: skip
    result = run_recipe(recipe, progress=False)
    assert result is not None and result.results.state == "finished" and result.results.test
    assert len(calls) == 1  # left out after its first failure
    err = capsys.readouterr().err
    assert err.count("the mlflow logger failed in log (ConnectionError: tracking server down)") == 1
    assert len(epochs(tmp_path / "run")) == 2  # metrics.jsonl is always written


@pytest.mark.parametrize("kind", ["symlink", "file", "fifo"])
def test_wandb_never_writes_through_what_sits_at_its_folder(kind: str, tmp_path: Path) -> None:
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    make_hostile(run / RunFolder.WANDB, kind, outside)
    drive(WandbLogger(), run, RECIPE, 0, range(1, 2))
    assert not any(outside.iterdir())
    assert (run / RunFolder.WANDB).is_dir() and not (run / RunFolder.WANDB).is_symlink()
    assert any((run / RunFolder.WANDB).rglob("run-*.wandb"))


def test_tracker_parameters_are_the_recipe_flat() -> None:
    flat = tracking.parameters(RECIPE)
    assert flat["optim.lr"] == RECIPE["optim"]["lr"] and flat["data.classes"] == [0, 1]
    assert not any(isinstance(value, dict) and value for value in flat.values())
    assert tracking.metric_names({"train_loss": 0.5}, None) == {"step/train_loss": 0.5}
    assert tracking.metric_names({"val_accuracy": 1}, 3) == {"epoch": 3.0, "val_accuracy": 1.0}


@pytest.mark.slow
def test_mlflow_run_killed_then_resumed_is_one_run_with_steps_continuing(mnist_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    args = [str(RECIPES / "mnist.toml"), *TINY, "train.epochs=3", "train.log_every=1", 'log.to=["mlflow"]',
            f"output.dir={folder}", "--no-progress"]  # fmt: skip
    zoo = [str(Path(sys.executable).with_name("zoo")), "run"]
    process = subprocess.Popen([*zoo, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((folder / "checkpoints").glob("*/state.json")) or not (folder / RunFolder.TRACKING).exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_id = json.loads((folder / RunFolder.TRACKING).read_text())["mlflow"]
    resumed = subprocess.run([*zoo, *args, "--resume", str(folder)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    run = only_run()
    assert run.info.run_id == killed_id and run.info.status == "FINISHED"
    records = epochs(folder)
    assert [step for step, _ in history(killed_id, "val_accuracy")] == [r["step"] for r in records]
    steps = [step for step, _ in history(killed_id, "step/train_loss")]
    assert set(steps) == set(range(1, records[-1]["step"] + 1))  # steps after the checkpoint logged again, none lost
    assert "model.safetensors" not in artifacts(killed_id)  # log.weights is off


@pytest.mark.slow
def test_under_nproc_rank_0_alone_logs_to_mlflow(mnist_dir: Path, tmp_path: Path) -> None:
    result = zoo_command(
        "run", "--nproc", "2", str(RECIPES / "mnist.toml"), *TINY, "train.epochs=1", "train.log_every=1",
        'log.to=["mlflow"]', f"output.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = only_run()
    steps = [step for step, _ in history(run.info.run_id, "step/train_loss")]
    assert steps and len(steps) == len(set(steps))  # one rank's records: a second would repeat every step


def test_without_a_store_named_mlflow_keeps_runs_in_zoo_cache_and_says_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    run = tmp_path / "run"
    run.mkdir()
    (run / RunFolder.RESULTS).write_text('{"state": "finished"}')
    before = {path for path in tmp_path.rglob("*") if path.is_file()}
    logger = MlflowLogger()
    logger.start(RECIPE, run, 0, [])
    logger.log({"train_loss": 0.5, "val_accuracy": 0.5}, 10, 1)
    logger.finish({"state": "finished", "steps": 10}, [run / RunFolder.RESULTS])
    written = {path for path in tmp_path.rglob("*") if path.is_file()} - before
    cache = tmp_path / "cache" / "mlflow"  # conftest's ZOO_CACHE_DIR
    assert (cache / "mlflow.db") in written
    assert all(path.is_relative_to(cache) or path.is_relative_to(run) for path in written), sorted(written)
    assert any(path.is_relative_to(cache / "mlartifacts") and path.name == "results.json" for path in written)
    assert "mlflow" not in capsys.readouterr().err  # MLflow's own log lines show with zoo --verbose only


@pytest.mark.slow  # four processes importing MLflow: about 30 s on 2 cores
def test_runs_starting_at_once_on_a_new_store_all_log_and_leave_it_usable(tmp_path: Path) -> None:
    """Two first runs on zoo's default store once migrated the new database at once: both failed
    (table _alembic_tmp_metrics already exists) and so did every later run, until it was deleted."""
    starter = (
        "import sys, time; from pathlib import Path; from zoo.config import recipe as recipes\n"
        "from zoo.training.loggers.mlflow import MlflowLogger; import mlflow\n"
        f"recipe = recipes.load(Path({str(RECIPES / 'mnist.toml')!r}), check=False).to_dict()\n"
        "go, run = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "run.mkdir()\n"
        "while not go.exists(): time.sleep(0.01)\n"
        "logger = MlflowLogger(); logger.start(recipe, run, 0, [])\n"
        "logger.finish({'state': 'finished', 'steps': 0}, [])\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["ZOO_CACHE_DIR"] = str(tmp_path / "cache")
    go = tmp_path / "go"

    def started(*names: str) -> list[subprocess.Popen]:
        command = [sys.executable, "-c", starter, str(go)]
        return [subprocess.Popen([*command, str(tmp_path / name)], env=env, stderr=subprocess.PIPE) for name in names]

    def ended(processes: list[subprocess.Popen]) -> None:
        for process in processes:
            assert process.wait(timeout=180) == 0, process.stderr.read().decode()

    at_once = started("a", "b", "c")
    while not all((tmp_path / name).is_dir() for name in "abc"):  # every one imported: the starts overlap
        time.sleep(0.05)
    go.touch()
    ended(at_once)
    ended(started("d"))  # a later run alone
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'cache' / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    assert sorted((run.info.run_name, run.info.status) for run in runs) == [(name, "FINISHED") for name in "abcd"]


def test_a_failing_tracker_line_hides_passwords_and_stays_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Refused:
        def start(self, recipe: Any, run: Path, step: int, history: Any) -> None:
            raise ConnectionError("API request to http://user:s3cret@127.0.0.1:9/api failed\nTraceback: ...")

        def log(self, metrics: Any, step: int, epoch: int | None = None) -> None: ...

        def finish(self, results: Any, files: Any) -> None: ...

    Loggers({"mlflow": Refused()}, required=()).start(RECIPE, tmp_path, 0, [])
    err = capsys.readouterr().err
    assert "s3cret" not in err and "http://***@127.0.0.1:9/api" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("log.mlflow={tracking_uri = 5}", ("log.mlflow.tracking_uri", "expected str", "5")),
        ('log.mlflow={experiment = ["a"]}', ("log.mlflow.experiment", "expected str")),
    ],
)
def test_a_tracker_argument_of_the_wrong_type_is_one_line_before_anything_runs(
    override: str, fragments: tuple[str, ...], tmp_path: Path
) -> None:
    result = zoo_command("run", str(RECIPES / "mnist.toml"), 'log.to=["mlflow"]', override,
                         f"output.dir={tmp_path / 'run'}")  # fmt: skip
    assert_user_error(result, *fragments)
    assert not (tmp_path / "run").exists()


@given(
    user=st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs", "Zs", "Cc")), max_size=12),
    password=st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs", "Zs", "Cc")), min_size=1),
)
def test_every_password_in_a_url_is_hidden_up_to_the_hosts_at_sign(user: str, password: str) -> None:
    """A password may hold '@' or ':' itself (http://alice:p@ss@host): nothing of it shows."""
    from zoo.training.loggers.fan_out import without_passwords

    shown = without_passwords(f"failed: http://{user}:{password}@mlflow.example.com:5000/api (retrying)")
    assert shown == "failed: http://***@mlflow.example.com:5000/api (retrying)"


def test_two_spellings_of_one_sqlite_store_share_its_lock(tmp_path: Path) -> None:
    from zoo.training.loggers import mlflow

    (tmp_path / "real").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "real" / "mlflow.db").write_bytes(b"")
    (tmp_path / "other" / "alias.db").symlink_to(tmp_path / "real" / "mlflow.db")
    with mlflow._one_at_a_time(f"sqlite:///{tmp_path / 'other' / 'alias.db'}"):
        assert (tmp_path / "real" / ".mlflow.db.lock").is_file()
    assert not (tmp_path / "other" / ".alias.db.lock").exists()
