"""Evaluation: metrics from a model's predictions on a split, and a saved run evaluated again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, assert_user_error, write_finished_run
from torch import nn

from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.inference.evaluate import evaluate, evaluate_run
from zoo.runs.folder import RunFolder
from zoo.training.runner import run
from zoo.training.setup import build_run


class Constant(nn.Module):
    """Predicts ``label`` for every input, with a fixed confidence."""

    def __init__(self, label: int, classes: int) -> None:
        super().__init__()
        self.logits = torch.zeros(classes)
        self.logits[label] = 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


class Ranked(nn.Module):
    """Ranks the classes in one fixed order for every input: top-1 is ``order[0]``, top-5 ``order[:5]``."""

    def __init__(self, order: list[int]) -> None:
        super().__init__()
        self.logits = torch.zeros(len(order))
        self.logits[torch.tensor(order)] = torch.arange(len(order), 0, -1, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_top5_accuracy_from_ten_classes_on(mnist_dir: Path) -> None:
    recipe = recipes.load(RECIPES / "mnist.toml", ["data.eval_batch_size=1000"])
    setup = build_run(recipe, progress=False)
    labels = setup.splits.test.labels
    order = [3, 1, 4, 0, 9, 2, 6, 5, 8, 7]
    metrics = evaluate(Ranked(order), setup.batches(setup.splits.test), nn.CrossEntropyLoss(), list("0123456789"), None)
    in_top5 = sum(int((labels == label).sum()) for label in order[:5])
    assert metrics["top5_accuracy"] == pytest.approx(in_top5 / len(labels))
    assert metrics["accuracy"] == pytest.approx(int((labels == 3).sum()) / len(labels))
    few = recipes.load(RECIPES / "mnist.toml", ["data.classes=[3,8]"])
    small = build_run(few, progress=False)
    assert "top5_accuracy" not in evaluate(Constant(0, 2), small.batches(small.splits.test), nn.CrossEntropyLoss(),
                                           ["3", "8"], None)  # fmt: skip


def test_metrics_follow_the_predictions(mnist_dir: Path) -> None:
    recipe = recipes.load(RECIPES / "mnist.toml", ["data.classes=[3,8]", "data.eval_batch_size=100"])
    setup = build_run(recipe, progress=False)
    batches = setup.batches(setup.splits.test)
    support = [int((setup.splits.test.labels == label).sum()) for label in (0, 1)]  # 1,010 threes, 974 eights
    metrics = evaluate(Constant(1, 2), batches, nn.CrossEntropyLoss(), ["3", "8"], None)
    assert metrics["confusion_matrix"] == [[0, support[0]], [0, support[1]]]
    assert metrics["accuracy"] == pytest.approx(support[1] / sum(support))
    assert metrics["recall"] == pytest.approx(0.5) and metrics["per_class"][1]["recall"] == 1.0
    logits = Constant(1, 2)(torch.zeros(1))
    wrong, right = (nn.functional.cross_entropy(logits, torch.tensor([label])).item() for label in (0, 1))
    assert metrics["loss"] == pytest.approx((support[0] * wrong + support[1] * right) / sum(support))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("evaluate") / "run"
    overrides = ["data.classes=[1,7]", "data.per_class=30", "train.epochs=1", f"output.dir={folder}"]
    run(recipes.load(RECIPES / "mnist.toml", overrides), progress=False)
    return folder


def test_a_run_evaluated_again_on_each_split(small_run: Path) -> None:
    assert evaluate_run(small_run) == RunFolder(small_run).results.test  # the same weights, split and batches
    assert sum(row["support"] for row in evaluate_run(small_run, "train")["per_class"]) == 60
    assert sum(row["support"] for row in evaluate_run(small_run, "test", ["data.eval_batch_size=7"])["per_class"]) == (
        1135 + 1028
    )


def test_only_data_keys_may_change_and_the_classes_must_stay(small_run: Path) -> None:
    with pytest.raises(Exception, match="only data.\\* keys can change"):
        evaluate_run(small_run, "test", ["train.epochs=3"])
    result = CliRunner().invoke(cli, ["eval", str(small_run), "--data.classes=[1,2]"])
    assert result.exit_code == 2 and "but the run was trained on ['1', '7']" in result.stderr


@pytest.mark.parametrize(
    ("errors", "fragments"),
    [
        ("RUN/model.safetensors", ["would replace", "model.safetensors", "only the run writes"]),
        ("RUN/results.json", ["would replace", "results.json"]),
        ("RUN/model.onnx", ["would replace", "model.onnx", "zoo export wrote"]),
        ("RUN/checkpoints/errors.csv", ["inside checkpoints/"]),
        ("LINK_TO_RUN/config.json", ["would replace", "config.json"]),
        ("OTHER/model.safetensors", ["would replace", "OTHER", "model.safetensors", "only the run writes"]),
        ("OTHER/model.onnx", ["would replace", "OTHER", "model.onnx", "zoo export wrote"]),
        ("OTHER/checkpoints/errors.csv", ["inside checkpoints/ of", "OTHER"]),
        ("LINK_TO_WEIGHTS", ["is a symbolic link"]),
        ("RUN", ["is a folder"]),
        ("FIFO", ["is not a regular file"]),
    ],
)
def test_errors_never_replace_a_runs_own_files(tmp_path: Path, errors: str, fragments: list[str]) -> None:
    """Refused before the run's data or weights are read: every file of both runs is as it was."""
    runs = {name: write_finished_run(tmp_path / name).path for name in ("RUN", "OTHER")}
    for folder in runs.values():
        (folder / "model.safetensors").write_bytes(b"weights")
        (folder / "model.onnx").write_bytes(b"onnx")
        (folder / "checkpoints").mkdir()
    (tmp_path / "LINK_TO_RUN").symlink_to(runs["RUN"])
    (tmp_path / "LINK_TO_WEIGHTS").symlink_to(runs["RUN"] / "model.safetensors")
    os.mkfifo(tmp_path / "FIFO")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and not path.is_symlink()}
    refused = CliRunner().invoke(cli, ["eval", str(runs["RUN"]), "--errors", str(tmp_path / errors)])
    assert_user_error(refused, "--errors", *fragments)
    after = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and not path.is_symlink()}
    assert after == before


def test_errors_may_go_beside_another_runs_files(
    small_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cd runs/other && zoo eval ../run`: the default errors.csv is no file of the other run's, so it
    is written there, and the other run's files are as they were."""
    other = write_finished_run(tmp_path / "other").path
    before = {path: path.read_bytes() for path in other.rglob("*")}
    monkeypatch.chdir(other)
    result = CliRunner().invoke(cli, ["eval", str(small_run)])
    assert result.exit_code == 0, result.output
    assert (other / "errors.csv").read_text().count("\n") > 1  # a header and the misclassified items
    assert {path: path.read_bytes() for path in other.rglob("*") if path.name != "errors.csv"} == before
