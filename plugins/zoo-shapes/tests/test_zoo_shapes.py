"""The example plugin's own tests: its contract with zoo, and a whole recipe through zoo."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import zoo
from zoo.config import recipe as recipes
from zoo.training.runner import run

RECIPE = Path(__file__).resolve().parents[1] / "shapes.toml"


def test_entry_points_are_found_under_this_distribution() -> None:
    from zoo.plugins import _registry as registry

    registry.refresh()
    for kind, name in (("model", "tiny_mlp"), ("dataset", "shapes"), ("loss", "poly1"), ("logger", "csv")):
        assert registry.get(kind, name).provider == "zoo-shapes"


def test_tiny_mlp_follows_the_model_contract() -> None:
    backbone = zoo.create_model("tiny_mlp", hidden=16, depth=3)
    assert backbone.num_features == 16
    assert backbone(torch.zeros(5, 1, 28, 28)).shape == (5, 16)
    with pytest.raises(ValueError, match="depth"):
        zoo.create_model("tiny_mlp", depth=0)


def test_shapes_follows_the_dataset_contract(tmp_path: Path) -> None:
    train = zoo.create_dataset("shapes", tmp_path, "train", samples=300)
    test = zoo.create_dataset("shapes", tmp_path, "test", samples=300)
    assert train.classes == ["circle", "square", "triangle"]
    assert (len(train), len(test)) == (300, 60)
    image, label = train[0]
    assert image.shape == (1, 28, 28) and isinstance(label, int)
    assert train.images.dtype == torch.uint8  # zoo's in-memory fast path
    assert set(torch.bincount(train.targets).tolist()) != {0}
    again = zoo.create_dataset("shapes", tmp_path, "train", samples=300)
    assert torch.equal(again.images, train.images)
    assert not torch.equal(test.images[:60], train.images[:60])


def test_poly1_is_cross_entropy_plus_epsilon_times_one_minus_p() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    targets = torch.tensor([1, 2])
    ce = torch.nn.functional.cross_entropy(logits, targets)
    p_true = logits.softmax(1)[torch.arange(2), targets]
    assert zoo.create_loss("poly1", epsilon=0.0)(logits, targets).item() == pytest.approx(ce.item())
    expected = ce + 2.0 * (1 - p_true).mean()
    assert zoo.create_loss("poly1", epsilon=2.0)(logits, targets).item() == pytest.approx(expected.item())


def csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as file:
        return list(csv.reader(file))


def test_csv_logger_writes_a_row_per_metric_and_replaces_what_a_resume_logs_again(tmp_path: Path) -> None:
    logger = zoo.create_logger("csv")
    logger.start({"name": "shapes"}, tmp_path, 0, [])
    logger.log({"train_loss": 0.5}, 5)
    logger.log({"train_loss": 0.25, "val_accuracy": 0.75}, 10, epoch=1)
    logger.log({"train_loss": 0.125}, 15)
    logger.finish({"state": "interrupted"}, [])
    header, *rows = csv_rows(tmp_path / "metrics.csv")
    assert header == ["step", "epoch", "name", "value"]
    assert rows == [["5", "", "train_loss", "0.5"], ["10", "1", "train_loss", "0.25"],
                    ["10", "1", "val_accuracy", "0.75"], ["15", "", "train_loss", "0.125"]]  # fmt: skip

    resumed = zoo.create_logger("csv")  # from the checkpoint at step 10: step 15 is trained again
    resumed.start({"name": "shapes"}, tmp_path, 10, [{"epoch": 1, "step": 10, "train_loss": 0.25}])
    resumed.log({"train_loss": 0.0625}, 15)
    assert csv_rows(tmp_path / "metrics.csv")[1:] == [*rows[:3], ["15", "", "train_loss", "0.0625"]]


def test_csv_logger_refuses_a_file_outside_the_run_folder() -> None:
    with pytest.raises(ValueError, match="inside the run folder"):
        zoo.create_logger("csv", filename="../metrics.csv")


def test_the_plugin_recipe_trains_well_above_chance(tmp_path: Path) -> None:
    recipe = recipes.load(RECIPE, [f"output.dir={tmp_path / 'run'}"])
    result = run(recipe, progress=False)
    assert result.results.state == "finished"
    assert result.results.test["accuracy"] > 0.75  # chance is 1/3
