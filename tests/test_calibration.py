"""Calibrated scores: temperature scaling fitted on validation, the expected calibration error, and the
temperature carried by the run folder into predict, eval and exports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from multilabel_data import shapes_canvas

import zoo
from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.data.images import image_file
from zoo.data.transforms import build_transform
from zoo.errors import ZooError
from zoo.runs.folder import RunFolder
from zoo.tasks.calibration import ECE_BINS, expected_calibration_error, fit_temperature
from zoo.training.runner import run
from zoo.training.setup import build_run


def brute_ece(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """ECE by its definition, one image at a time into bins (lo, hi]."""
    probabilities = logits.softmax(1)
    total = 0.0
    for number in range(ECE_BINS):
        low, high = number / ECE_BINS, (number + 1) / ECE_BINS
        members = [i for i in range(len(labels)) if low < float(probabilities[i].max()) <= high]
        if members:
            accuracy = sum(int(probabilities[i].argmax() == labels[i]) for i in members) / len(members)
            confidence = sum(float(probabilities[i].max()) for i in members) / len(members)
            total += len(members) / len(labels) * abs(accuracy - confidence)
    return total


def over_confident(seed: int, images: int = 4000, scale: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(true logits), and a model's logits ``scale`` times the true ones: it
    ranks as well as it can but is far surer than it is right."""
    generator = torch.Generator().manual_seed(seed)
    true = torch.randn(images, 5, generator=generator) * 1.5
    labels = torch.multinomial(true.softmax(1), 1, generator=generator).flatten()
    return true * scale, labels


def test_ece_is_its_definition() -> None:
    logits, labels = over_confident(0, images=300)
    assert expected_calibration_error(logits, labels) == pytest.approx(brute_ece(logits, labels), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_temperature_scaling_lowers_the_ece_of_an_over_confident_model(seed: int) -> None:
    val_logits, val_labels = over_confident(seed)
    temperature = fit_temperature(val_logits, val_labels)
    assert temperature == pytest.approx(4.0, rel=0.15)  # it undoes the over-confidence
    test_logits, test_labels = over_confident(seed + 100)
    before = expected_calibration_error(test_logits, test_labels)
    after = expected_calibration_error(test_logits / temperature, test_labels)
    assert before > 0.1 and after < before / 3


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mnist_cnn trained on single-label shape canvases with train.calibrate = true."""
    where = tmp_path_factory.mktemp("calibrated")
    root = shapes_canvas(where / "canvas", train=200, test=60, single=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_CACHE_DIR", str(where / "cache"))
        recipe = recipes.from_dict(
            {
                "name": "calibrated",
                "model": {"backbone": "mnist_cnn", "args": {"conv1": 8, "conv2": 16, "hidden": 32}},
                "data": {"dataset": "csv", "root": str(root), "val_split": 0.3, "batch_size": 32},
                "optim": {"lr": 3e-3},
                "train": {"epochs": 3, "calibrate": True},
                "output": {"dir": str(where / "run")},
            },
            str(where / "recipe.toml"),
        )
        result = run(recipe, progress=False)
    assert result is not None
    return result.folder


def test_a_calibrated_run_records_and_applies_its_temperature(calibrated: Path, tmp_path: Path) -> None:
    results = json.loads((calibrated / RunFolder.RESULTS).read_text())
    calibration, test = results["calibration"], results["test"]
    temperature = calibration["temperature"]
    assert temperature != 1.0 and calibration["val_ece_after"] < calibration["val_ece_before"]
    assert (calibration["test_ece_before"], calibration["test_ece_after"]) == (test["ece_uncalibrated"], test["ece"])
    assert json.loads((calibrated / RunFolder.CONFIG).read_text())["temperature"] == temperature
    image = calibrated.parent / "canvas/images/test0.png"
    model = zoo.load(calibrated)
    with image_file(image) as opened:
        logits = model(build_transform(RunFolder(calibrated).preprocessing)(opened)[None]).detach()
    expected = (logits / temperature).softmax(1).max().item()
    runner = CliRunner()
    probabilities = {}
    exported = runner.invoke(cli, ["export", str(calibrated), "--format", "onnx"])
    assert exported.exit_code == 0, exported.output
    for backend in ("torch", "onnxruntime"):
        answer = runner.invoke(cli, ["predict", str(calibrated), str(image), "--backend", backend, "--json"])
        assert answer.exit_code == 0, answer.output
        probabilities[backend] = json.loads(answer.stdout)[0]["top"][0]["probability"]
    assert probabilities["torch"] == pytest.approx(expected, abs=1e-5)
    assert probabilities["onnxruntime"] == pytest.approx(expected, abs=1e-4)
    assert abs(logits.softmax(1).max().item() - expected) > 1e-3  # the temperature changed the probability
    config = json.loads((calibrated / RunFolder.CONFIG).read_text())
    for damaged in (-1.0, "hot", None):
        (calibrated / RunFolder.CONFIG).write_text(json.dumps(config | {"temperature": damaged}))
        refused = runner.invoke(cli, ["predict", str(calibrated), str(image)])
        assert refused.exit_code == 2 and "`temperature` must be a positive number" in refused.stderr
    (calibrated / RunFolder.CONFIG).write_text(json.dumps(config))


def test_errors_csv_and_the_cards_confusions(calibrated: Path, tmp_path: Path) -> None:
    answer = CliRunner().invoke(cli, ["eval", str(calibrated), "--json", "--errors", str(tmp_path / "errors.csv")])
    assert answer.exit_code == 0, answer.output
    test = json.loads(answer.stdout)
    matrix = test["confusion_matrix"]
    rows = list(csv.DictReader((tmp_path / "errors.csv").read_text().splitlines()))
    wrong = sum(n for t, row in enumerate(matrix) for p, n in enumerate(row) if t != p)
    assert len(rows) == test["errors"] == wrong > 0
    truth = {str(calibrated.parent / "canvas" / row["image"]): row["labels"] for row in
             csv.DictReader((calibrated.parent / "canvas/test.csv").read_text().splitlines())}  # fmt: skip
    assert all(row["true"] == truth[row["item"]] != row["predicted"] for row in rows)
    assert all(0.25 <= float(row["confidence"]) <= 1.0 for row in rows)  # the top of 4 calibrated probabilities
    labels = [row["label"] for row in test["per_class"]]
    t, p = max(((t, p) for t in range(4) for p in range(4) if t != p), key=lambda pair: matrix[pair[0]][pair[1]])
    card = (calibrated / RunFolder.MODEL_CARD).read_text()
    assert f"| {labels[t]} | {labels[p]} | {matrix[t][p]} |" in card.split("Most frequent confusions")[1]


def test_calibrate_needs_validation_and_a_single_label_run(tmp_path: Path) -> None:
    root = shapes_canvas(tmp_path / "canvas", train=12, test=4)
    for data, message in (({"val_split": 0.0}, "set data.val_split"), ({}, "multi_label runs tune thresholds")):
        recipe = recipes.from_dict(
            {"name": "x", "model": {"backbone": "mnist_cnn"}, "train": {"calibrate": True},
             "data": {"dataset": "csv", "root": str(root), "val_split": 0.25} | data}, "t")  # fmt: skip
        with pytest.raises(ZooError, match=message):
            build_run(recipe, progress=False)
