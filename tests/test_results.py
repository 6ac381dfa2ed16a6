"""Results people can see: plots, zoo eval, zoo predict, zoo runs."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, assert_user_error, dead_pid, write_finished_run
from PIL import Image

import zoo
from zoo import _locking as locking
from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.runs import plots
from zoo.runs.folder import RunFolder, RunResults
from zoo.runs.table import summary
from zoo.training.runner import run

COMMON = ["data.classes=[3,7]", "data.per_class=100", "data.val_split=0.05", "data.batch_size=16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """3 vs 7, trained well enough to read digits back from PNG files."""
    folder = tmp_path_factory.mktemp("trained") / "run"
    recipe = recipes.load(RECIPES / "mnist.toml", [*COMMON, "train.epochs=3", f"output.dir={folder}"])
    assert run(recipe, progress=False).results.test["accuracy"] > 0.95
    return folder


def test_plots_are_valid_images_of_the_expected_size(trained: Path) -> None:
    expected = {
        plots.LOSS: plots.CURVE_SIZE,
        plots.ACCURACY: plots.CURVE_SIZE,
        plots.LEARNING_RATE: plots.CURVE_SIZE,
        plots.CONFUSION: plots.MATRIX_SIZE,
    }
    for name, size in expected.items():
        with Image.open(trained / name) as image:
            image.verify()
        with Image.open(trained / name) as image:
            assert (image.format, image.size) == ("PNG", size), name
            assert sum(1 for count in image.convert("L").histogram() if count) > 10, f"{name} is blank"
    card = (trained / "README.md").read_text()
    for name in expected:
        assert f"]({name})" in card


def test_metrics_record_train_and_val_accuracy(trained: Path) -> None:
    history = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["train_accuracy"] <= 1.0 and 0.0 <= r["val_accuracy"] <= 1.0 for r in history)
    assert history[-1]["train_accuracy"] > history[0]["train_accuracy"] or history[0]["train_accuracy"] > 0.95


def test_eval_reproduces_the_runs_test_metrics_exactly(trained: Path) -> None:
    result = CliRunner().invoke(cli, ["eval", str(trained), "--json"])
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    saved = json.loads((trained / "results.json").read_text())["test"]
    for key in ("accuracy", "precision", "recall", "f1", "per_class", "confusion_matrix"):
        assert metrics[key] == saved[key], key
    table = CliRunner().invoke(cli, ["eval", str(trained), "--split", "val", "--data.eval_batch_size=7"])
    assert table.exit_code == 0, table.stderr
    assert table.stdout.startswith("val: accuracy") and "CLASS" in table.stdout and "SUPPORT" in table.stdout


def test_eval_refuses_other_keys_and_other_classes(trained: Path) -> None:
    assert_user_error(
        CliRunner().invoke(cli, ["eval", str(trained), "--optim.lr=1"]), "unexpected argument '--optim.lr=1'"
    )
    assert_user_error(
        CliRunner().invoke(cli, ["eval", str(trained), "--data.classes=[1,2]"]), "the run was trained on ['3', '7']"
    )
    assert_user_error(CliRunner().invoke(cli, ["eval", "no/such/run"]), "run folder not found: no/such/run")


def write_digits(folder: Path, count: int) -> tuple[list[Path], list[str], torch.Tensor]:
    """The first ``count`` test 3s and 7s as PNG files; half of them enlarged and in colour."""
    test = zoo.create_dataset("mnist", recipes.default_data_dir(), "test")
    chosen = [i for i, t in enumerate(test.targets.tolist()) if t in (3, 7)][:count]
    paths = []
    for n, index in enumerate(chosen):
        image = Image.fromarray(test.images[index, 0].numpy())
        path = folder / f"digit{n}.png"
        if n % 2:
            image = image.convert("RGB").resize((56, 56), Image.NEAREST)
            path = path.with_suffix(".jpg") if n % 4 == 3 else path
        image.save(path)
        paths.append(path)
    return paths, [str(test.targets[i].item()) for i in chosen], test.images[chosen]


def test_predict_reads_pngs_through_the_runs_preprocessing(trained: Path, tmp_path: Path) -> None:
    paths, truth, images = write_digits(tmp_path, 20)
    result = CliRunner().invoke(cli, ["predict", str(trained), *map(str, paths), "--top-k", "2", "--json"])
    assert result.exit_code == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert [p["file"] for p in predictions] == list(map(str, paths))
    assert all(len(p["top"]) == 2 and p["top"][0]["probability"] >= p["top"][1]["probability"] for p in predictions)
    predicted = [p["top"][0]["label"] for p in predictions]
    assert sum(p == t for p, t in zip(predicted, truth)) >= 19

    model = zoo.load(trained)  # the exact PNGs must score like the dataset's own tensors
    with torch.no_grad():
        direct = model((images.float() / 255 - 0.1307) / 0.3081).softmax(1)
    for n in range(0, 20, 2):  # the lossless, unresized ones
        assert predictions[n]["top"][0]["probability"] == pytest.approx(direct[n].max().item(), abs=1e-5)


def test_predict_reports_unreadable_files_and_predicts_the_rest(trained: Path, tmp_path: Path) -> None:
    paths, _, _ = write_digits(tmp_path, 2)
    (tmp_path / "notes.txt").write_text("not an image")
    result = CliRunner().invoke(
        cli,
        [
            "predict",
            str(trained),
            str(paths[0]),
            str(tmp_path / "notes.txt"),
            str(tmp_path / "missing.png"),
            str(paths[1]),
        ],
    )
    assert result.exit_code == 2
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [str(paths[0]), str(paths[1])]
    errors = result.stderr.splitlines()
    assert len(errors) == 2 and "notes.txt is not a readable image" in errors[0] and "missing.png" in errors[1]
    assert "Traceback" not in result.stderr


def png_claiming(width: int, height: int, path: Path) -> Path:
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb, without the memory)."""
    import struct
    import zlib

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    header = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = header[4:12]
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    path.write_bytes(bytes(data))
    return path


def test_predict_never_opens_a_fifo_or_decodes_a_bomb(trained: Path, tmp_path: Path) -> None:
    import os

    paths, _, _ = write_digits(tmp_path, 1)
    os.mkfifo(tmp_path / "pipe.png")  # opening it would wait for a writer forever
    bomb = png_claiming(40_000, 40_000, tmp_path / "bomb.png")
    result = CliRunner().invoke(cli, ["predict", str(trained), str(tmp_path / "pipe.png"), str(bomb), str(paths[0])])
    assert result.exit_code == 2 and result.stdout.startswith(str(paths[0]))
    errors = result.stderr.splitlines()
    assert "pipe.png is not a readable image (not a regular file)" in errors[0]
    assert "bomb.png is too large to decode safely" in errors[1] and len(errors) == 2


def test_runs_table_and_compare_lists_exactly_the_differing_keys(trained: Path, tmp_path: Path) -> None:
    other = tmp_path / "runs" / "other"
    run(
        recipes.load(RECIPES / "mnist.toml", [*COMMON, "train.epochs=1", "optim.lr=0.001", f"output.dir={other}"]),
        progress=False,
    )
    (tmp_path / "runs" / "trained").symlink_to(trained)
    table = CliRunner().invoke(cli, ["runs", "--sort", "test_acc"])
    assert table.exit_code == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:5] == ["NAME", "RECIPE", "BACKBONE", "DATASET", "STATE"]
    accuracy = {name: json.loads((tmp_path / "runs" / name / "results.json").read_text())["test"]["accuracy"] for name in ("trained", "other")}  # fmt: skip
    assert [row.split()[0] for row in rows] == sorted(
        accuracy, key=accuracy.get, reverse=True
    )  # best test accuracy first

    result = CliRunner().invoke(cli, ["runs", "--compare", str(trained), str(other), "--json"])
    assert result.exit_code == 0, result.stderr
    compared = json.loads(result.stdout)
    assert compared["differences"] == {"optim.lr": [0.005, 0.001], "train.epochs": [3, 1]}
    text = CliRunner().invoke(cli, ["runs", "--compare", str(trained), str(other)]).stdout
    assert [line.split()[0] for line in text.splitlines()[1:3]] == ["optim.lr", "train.epochs"]
    assert "test_acc" in text


def test_runs_compare_never_prints_a_tracker_password(tmp_path: Path) -> None:
    """`zoo runs --compare` printed log.mlflow's tracking_uri with its password, as a table and as JSON."""
    folders = []
    for name, host in (("a", "127.0.0.1:9"), ("b", "127.0.0.1:10")):
        run_folder = write_finished_run(tmp_path / name)
        uri = f"log.mlflow.tracking_uri=http://alice:S3cretPw@{host}"
        run_folder.write_recipe(
            recipes.load(
                RECIPES / "mnist.toml", [uri, 'log.to=["mlflow"]', f"output.dir={run_folder.path}"], check=False
            )
        )
        folders.append(str(run_folder.path))
    for json_flag in ([], ["--json"]):
        shown = CliRunner().invoke(cli, ["runs", "--compare", *folders, *json_flag])
        assert shown.exit_code == 0, shown.stderr
        assert "S3cretPw" not in shown.output and "alice" not in shown.output
        assert "http://***@127.0.0.1:9" in shown.output and "log.mlflow" in shown.output  # the difference stays


def test_tensorboard_logs_every_epoch(mnist_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tmp_path / "run"
    run(
        recipes.load(
            RECIPES / "mnist.toml", [*COMMON, "train.epochs=2", "train.tensorboard=true", f"output.dir={folder}"]
        ),
        progress=False,
    )
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/accuracy", "val/accuracy", "val/loss", "lr"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("val/accuracy")] == [1, 2]


@pytest.mark.parametrize("epochs", [1, 2, 7])
def test_a_curve_per_epoch_ticks_whole_epochs_only(
    epochs: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(figure))
    xs = list(range(1, epochs + 1))
    plots.curves(tmp_path / "loss.png", "Loss per epoch", "loss", {"train": (xs, [1.0 / x for x in xs])}, "epoch")
    (axes,) = drawn[0].axes
    drawn[0].canvas.draw()  # the locator picks the ticks when the figure is drawn
    shown = [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]]
    assert shown and all(float(tick).is_integer() for tick in shown), shown


@pytest.mark.parametrize("rate", [3e-4, 2.1e-4, 5e-3, 1.0])
def test_a_curves_labels_and_ticks_stay_inside_the_image(rate: float, tmp_path: Path, monkeypatch) -> None:
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(figure))
    steps = list(range(1, 101))
    plots.curves(tmp_path / "lr.png", "Learning rate (head)", "learning rate", {"lr": (steps, [rate] * 100)}, "step")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = drawn[0]
    canvas = FigureCanvasAgg(figure)  # as savefig renders it
    canvas.draw()
    renderer = canvas.get_renderer()
    (axes,) = figure.axes
    (low, high), (left, right) = axes.get_ylim(), axes.get_xlim()
    shown_ticks = [tick.label1 for tick in axes.yaxis.get_major_ticks() if low <= tick.get_loc() <= high] + [
        tick.label1 for tick in axes.xaxis.get_major_ticks() if left <= tick.get_loc() <= right
    ]  # matplotlib keeps a tick or two beyond the limits, undrawn
    texts = [axes.yaxis.label, axes.xaxis.label, axes.title, *shown_ticks]
    width, height = canvas.get_width_height()
    for text in (t for t in texts if t.get_visible() and t.get_text()):
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, text.get_text()


def test_a_running_run_whose_process_is_gone_shows_as_killed(tmp_path: Path) -> None:
    run = write_finished_run(tmp_path / "run")
    run.write_results(RunResults(state="running", recipe_hash="abc"))
    assert summary(run)["state"] == "running"  # no claim: nothing proves it dead
    claim = locking.claim(run.path)
    assert summary(run)["state"] == "running"  # this process: alive
    (run.path / locking.LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid()}))
    assert summary(run)["state"] == "killed"
    claim.release()


@pytest.mark.parametrize(
    ("results", "said"),
    [
        (RunResults(state="running", recipe_hash="abc"), "its run is killed"),
        (RunResults(state="failed", recipe_hash="abc", reason="OSError: truncated"), "its run is failed: OSError"),
    ],
)
def test_using_a_run_that_never_wrote_its_weights_says_what_became_of_it(
    tmp_path: Path, results: RunResults, said: str
) -> None:
    run = write_finished_run(tmp_path / "run")
    run.file(RunFolder.CONFIG).unlink()
    run.write_results(results)
    (run.path / locking.LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid()}))
    result = CliRunner().invoke(cli, ["eval", str(run.path)])
    assert_user_error(result, f"{run.path} has no weights yet: {said}", f"--resume {run.path}")


def test_compare_shows_how_many_processes_each_run_trained_with(tmp_path: Path) -> None:
    """--nproc 2 doubles the global batch and halves the steps, which no recipe key shows."""
    runs = [write_finished_run(tmp_path / name) for name in ("one", "two")]
    for folder, processes in zip(runs, (1, 2)):
        folder.write_results(RunResults(state="finished", recipe_hash="abc", world_size=processes))
    result = CliRunner().invoke(cli, ["runs", "--compare", str(runs[0].path), str(runs[1].path)])
    assert result.exit_code == 0, result.output
    assert next(line for line in result.output.splitlines() if line.startswith("processes")).split() == [
        "processes",
        "1",
        "2",
    ]
