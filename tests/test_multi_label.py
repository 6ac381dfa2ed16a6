"""Multi-label classification: the csv dataset, mAP and thresholds, training, predict on both backends."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import REPO, assert_user_error
from hypothesis import given, settings
from hypothesis import strategies as st
from multilabel_data import SHAPES, shapes_canvas

from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.data.contract import check_dataset
from zoo.data.csv_labels import CsvLabels
from zoo.data.splits import load_splits
from zoo.errors import ZooError
from zoo.plugins.contracts import ContractError
from zoo.runs.folder import RunFolder
from zoo.tasks import multi_label
from zoo.tasks.losses import asl, bce
from zoo.training.runner import run
from zoo.training.setup import build_run


def brute_average_precision(scores: list[float], targets: list[int]) -> float:
    """AP by its definition: the mean, over the positives, of the precision among every item scored
    at least as high as that positive (scikit-learn's average_precision_score, ties included)."""
    positives = [s for s, t in zip(scores, targets) if t]
    return sum(
        sum(t for s, t in zip(scores, targets) if s >= p) / sum(1 for s in scores if s >= p) for p in positives
    ) / len(positives)


def f1_at(scores: torch.Tensor, targets: torch.Tensor, threshold: float) -> float:
    predicted, actual = scores >= threshold, targets > 0.5
    true_positives = float((predicted & actual).sum())
    return 2 * true_positives / (float(predicted.sum()) + float(actual.sum()))


# Scores on a coarse grid: ties are common, as they are with a model's rounded outputs.
SCORES = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 1)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(SCORES)
def test_average_precision_is_sklearns_on_fixed_scores(pairs: list[tuple[int, int]]) -> None:
    scores, targets = [s / 8 for s, _ in pairs], [t for _, t in pairs]
    found = multi_label.average_precision(torch.tensor(scores), torch.tensor(targets))
    if not any(targets):
        assert found is None
    else:
        assert found == pytest.approx(brute_average_precision(scores, targets), abs=1e-12)


def test_average_precision_of_known_rankings() -> None:
    # sklearn's docstring example: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.8333...
    assert multi_label.average_precision(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == (
        pytest.approx(5 / 6)
    )
    assert multi_label.average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == pytest.approx(0.5)


@settings(max_examples=150, deadline=None)
@given(SCORES)
def test_tuned_thresholds_maximise_f1(pairs: list[tuple[int, int]]) -> None:
    scores = torch.tensor([[s / 8] for s, _ in pairs], dtype=torch.float64)
    targets = torch.tensor([[float(t)] for _, t in pairs], dtype=torch.float64)
    (threshold,) = multi_label.tune_thresholds(scores, targets)
    if not targets.any():
        assert threshold == multi_label.DEFAULT_THRESHOLD
        return
    best = max(f1_at(scores, targets, float(candidate)) for candidate in scores.unique())
    assert f1_at(scores, targets, threshold) == pytest.approx(best)
    assert 0.0 <= threshold <= 1.0


def test_metrics_macro_micro_and_rows() -> None:
    scores = torch.tensor([[0.9, 0.2, 0.1], [0.8, 0.7, 0.3], [0.1, 0.6, 0.2], [0.4, 0.1, 0.2]])
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.float32)
    metrics = multi_label.metrics(scores, targets, ["a", "b", "c"], [0.5, 0.65, 0.5])
    assert metrics["mAP"] == pytest.approx(1.0)  # class c has no positive: left out of the macro mean
    assert metrics["per_class"][2]["ap"] is None
    assert metrics["mAP_micro"] == pytest.approx(brute_average_precision(scores.flatten().tolist(),
                                                                         targets.flatten().int().tolist()))  # fmt: skip
    b = metrics["per_class"][1]
    assert (b["threshold"], b["precision"], b["recall"], b["support"]) == (0.65, 1.0, 0.5, 2)  # 0.6 is under 0.65
    assert metrics["accuracy"] == pytest.approx(3 / 4)  # image 3 misses label b


def test_bce_takes_balanced_pos_weight_and_asl_ignores_easy_negatives() -> None:
    labels = torch.tensor([[1, 0], [1, 0], [1, 1], [0, 0]], dtype=torch.float32)
    assert multi_label.positive_weights(labels) == pytest.approx([1 / 3, 3.0])
    logits, targets = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.0, 1.0]])
    plain, weighted = bce()(logits, targets), bce(weight=torch.tensor([1.0, 3.0]))(logits, targets)
    assert float(weighted) > float(plain)
    easy_negative = torch.tensor([[-6.0]])  # sigmoid 0.0025, under ASL's clip of 0.05
    assert float(asl()(easy_negative, torch.zeros(1, 1))) == 0.0
    assert float(asl()(torch.tensor([[3.0]]), torch.zeros(1, 1))) > 0.0


def write_csv(root: Path, name: str, rows: list[tuple[str, str]]) -> None:
    with open(root / name, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "labels"])
        writer.writerows(rows)


def test_csv_dataset_reads_label_sets_and_single_labels(tmp_path: Path) -> None:
    root = shapes_canvas(tmp_path / "canvas", train=12, test=4)
    dataset = CsvLabels(root, "train")
    assert dataset.classes == sorted(SHAPES) and dataset.multi_label
    config = recipes.from_dict({"name": "x", "model": {"backbone": "mnist_cnn"},
                                "data": {"dataset": "csv", "root": str(root), "val_split": 0.25}}, "test")  # fmt: skip
    splits = load_splits(config.data, seed=0)
    assert splits.multi_label and splits.train.labels.shape == (9, 4) and len(splits.val) == 3
    rows = list(csv.DictReader((root / "train.csv").read_text().splitlines()))
    first = int(splits.train.indices[0])
    assert [SHAPES[i] for i in splits.train.labels[0].nonzero().flatten()] == rows[first]["labels"].split()
    single = tmp_path / "single"
    single.mkdir()
    (single / "a.png").write_bytes((root / "images/train0.png").read_bytes())
    write_csv(single, "train.csv", [("a.png", "cat"), ("a.png", "cat")])
    write_csv(single, "test.csv", [("a.png", "cat")])
    assert not CsvLabels(single, "train").multi_label and CsvLabels(single, "test").targets == [0]


@pytest.mark.parametrize(
    ("train_rows", "test_rows", "message"),
    [
        ([("a.png", "cat"), ("b.png", "dog")], [("a.png", "bird")], "test.csv line 2: label 'bird' is never used"),
        ([("a.png", "cat"), ("b.png", "")], [("a.png", "cat")], "train.csv line 3: 0 labels in single-label data"),
        ([("a.png", "cat"), ("missing.png", "dog")], [("a.png", "cat")], "train.csv line 3: image .*missing.png not found"),
        ([("a.png", "cat dog"), ("a.png", "cat")], [("a.png", "cat")], "train.csv line 3: a.png is listed on line 2"),
        ([("../a.png", "cat")], [("a.png", "cat")], "train.csv line 2: ../a.png is not a path inside"),
        ([("folder", "cat")], [("a.png", "cat")], "line 2: .*folder is not an image file"),
    ],
)  # fmt: skip
def test_csv_dataset_bad_rows_are_named(tmp_path: Path, train_rows: list, test_rows: list, message: str) -> None:
    root = shapes_canvas(tmp_path / "canvas", train=2, test=0)
    for name in ("a.png", "b.png"):
        (root / name).write_bytes((root / "images/train0.png").read_bytes())
    (root / "folder").mkdir()
    write_csv(root, "train.csv", train_rows)
    write_csv(root, "test.csv", test_rows)
    split = "test" if "test.csv" in message else "train"
    with pytest.raises(ZooError, match=message):
        CsvLabels(root, split)


def test_csv_dataset_refuses_a_fifo_image_and_missing_columns(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    os.mkfifo(root / "pipe.png")
    write_csv(root, "train.csv", [("pipe.png", "cat")])
    with pytest.raises(ZooError, match="line 2: .*pipe.png is not an image file"):
        CsvLabels(root, "train")
    with pytest.raises(ZooError, match="has no column 'path'"):
        CsvLabels(root, "train", image_column="path")


def test_val_mAP_is_refused_as_the_monitor_of_a_single_label_run(tmp_path: Path) -> None:
    # It is never in a single-label run's records: early stopping would never act, the last weights kept as "best".
    shapes = REPO / "plugins" / "zoo-shapes" / "shapes.toml"
    overrides = ["data.val_split=0.2", "data.args.samples=300", "train.epochs=1", "train.monitor=val_mAP"]
    result = CliRunner().invoke(cli, ["run", str(shapes), *overrides, "train.early_stop={patience=1}"])
    assert_user_error(result, "train.monitor = val_mAP", "single_label")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("single", [False, True], ids=["label-sets", "one-label"])
def test_a_val_csv_is_the_validation_split_instead_of_a_held_out_part(single: bool, tmp_path: Path) -> None:
    root = shapes_canvas(tmp_path / "canvas", train=60, test=20, val=15, single=single)
    config = recipes.from_dict({"name": "v", "model": {"backbone": "mnist_cnn"},
                                "data": {"dataset": "csv", "root": str(root), "val_split": 0.2}}).data  # fmt: skip
    splits = load_splits(config, seed=0)
    assert splits.multi_label is not single
    val_files = {row["image"] for row in csv.DictReader((root / "val.csv").read_text().splitlines())}
    assert len(splits.val) == len(val_files) == 15 and len(splits.train) == 60  # nothing held out of train.csv
    dataset = splits.val.dataset
    assert {Path(dataset.samples[int(i)][0]).relative_to(root).as_posix() for i in splits.val.indices} == val_files
    (root / "val.csv").unlink()
    held_out = load_splits(config, seed=0)  # without val.csv: about 0.2 of train.csv (per class, one-label data)
    assert 10 <= len(held_out.val) <= 13 and len(held_out.train) + len(held_out.val) == 60


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A narrow mnist_cnn trained on 400 shape canvases for 6 epochs (multi-label, chosen by the data)."""
    where = tmp_path_factory.mktemp("multi_label_run")
    root = shapes_canvas(where / "canvas", train=400, test=120)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_CACHE_DIR", str(where / "cache"))
        recipe = recipes.from_dict(
            {
                "name": "shapes_ml",
                "model": {"backbone": "mnist_cnn", "args": {"conv1": 16, "conv2": 32, "hidden": 64}},
                "data": {"dataset": "csv", "root": str(root), "val_split": 0.2, "batch_size": 32},
                "optim": {"lr": 3e-3},
                "train": {"epochs": 6, "precision": "fp32"},  # the same numbers with or without bf16 support
                "output": {"dir": str(where / "run")},
            },
            str(where / "recipe.toml"),
        )
        result = run(recipe, progress=False)
    assert result is not None
    return result.folder


def test_a_multi_label_set_trains_well_above_chance(trained: Path) -> None:
    results = json.loads((trained / RunFolder.RESULTS).read_text())
    test = results["test"]
    chance = sum(row["support"] for row in test["per_class"]) / (120 * len(SHAPES))  # a label's prevalence
    assert test["mAP"] > chance + 0.25, test["mAP"]  # 0.74 against 0.38 here
    assert results["monitor"] == "val_mAP"
    assert {"mAP", "mAP_micro", "f1"} <= test.keys() and "confusion_matrix" not in test
    config = json.loads((trained / RunFolder.CONFIG).read_text())
    assert [row["threshold"] for row in test["per_class"]] == config["thresholds"]
    assert all(0 < t < 1 for t in config["thresholds"]) and len(set(config["thresholds"])) > 1  # tuned per class
    card = (trained / RunFolder.MODEL_CARD).read_text()
    assert "type: mAP" in card and f"| mAP | {test['mAP']:.4f} |" in card


def test_zoo_eval_uses_the_runs_thresholds_and_a_damaged_one_is_one_line(trained: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    evaluated = runner.invoke(cli, ["eval", str(trained), "--json", "--errors", str(tmp_path / "errors.csv")])
    assert evaluated.exit_code == 0, evaluated.output
    stored = json.loads((trained / RunFolder.RESULTS).read_text())["test"]
    metrics = json.loads(evaluated.stdout)
    assert metrics["mAP"] == pytest.approx(stored["mAP"], abs=1e-6)
    errors = list(csv.DictReader((tmp_path / "errors.csv").read_text().splitlines()))
    assert len(errors) == metrics["errors"] == round((1 - stored["accuracy"]) * 120)  # every image not all right
    truth = {str(trained.parent / "canvas" / row["image"]): row["labels"] for row in
             csv.DictReader((trained.parent / "canvas/test.csv").read_text().splitlines())}  # fmt: skip
    for row in errors:
        assert row["true"] == truth[row["item"]] and row["predicted"] != row["true"]
        assert 0.0 <= float(row["confidence"]) <= 1.0
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in trained.iterdir():
        if path.is_file():
            (damaged / path.name).write_bytes(path.read_bytes())
    config = json.loads((damaged / RunFolder.CONFIG).read_text())
    config["thresholds"][0] = 1.5
    (damaged / RunFolder.CONFIG).write_text(json.dumps(config))
    image = str(trained.parent / "canvas/images/test0.png")
    refused = runner.invoke(cli, ["predict", str(damaged), image])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert "`thresholds` must list 4 numbers in [0, 1]" in refused.stderr


def test_exported_thresholds_give_predict_the_same_label_sets_on_both_backends(trained: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    runner = CliRunner()
    exported = runner.invoke(cli, ["export", str(trained), "--format", "onnx", "--output", str(tmp_path / "m.onnx")])
    assert exported.exit_code == 0, exported.output
    alone = tmp_path / "alone"  # the export alone: its metadata is all predict has
    alone.mkdir()
    (alone / "model.onnx").write_bytes((tmp_path / "m.onnx").read_bytes())
    for name in (RunFolder.CONFIG, RunFolder.RECIPE, RunFolder.RESULTS):
        (alone / name).write_bytes((trained / name).read_bytes())
    images = sorted(str(p) for p in (trained.parent / "canvas/images").glob("test*.png"))[:40]
    labels = {}
    for backend, folder in (("torch", trained), ("onnxruntime", alone)):
        answer = runner.invoke(cli, ["predict", str(folder), *images, "--backend", backend, "--json"])
        assert answer.exit_code == 0, answer.output
        labels[backend] = [entry["labels"] for entry in json.loads(answer.stdout)]
    assert labels["torch"] == labels["onnxruntime"]
    assert len({tuple(found) for found in labels["torch"]}) > 3  # several different label sets, none forced
    config = json.loads((alone / RunFolder.CONFIG).read_text())
    config["thresholds"] = [1.0, 1.0, 1.0, 1.0]  # the onnx backend reads the export's own thresholds, not these
    (alone / RunFolder.CONFIG).write_text(json.dumps(config))
    again = runner.invoke(cli, ["predict", str(alone), *images, "--backend", "onnxruntime", "--json"])
    assert [entry["labels"] for entry in json.loads(again.stdout)] == labels["torch"]


def test_zoo_serve_answers_a_multi_label_run_with_the_labels_zoo_predict_gives(trained: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from zoo.serving.app import create_app, load_served

    images = sorted((trained.parent / "canvas/images").glob("test*.png"))[:12]
    predicted = CliRunner().invoke(cli, ["predict", str(trained), *map(str, images), "--json"])
    assert predicted.exit_code == 0, predicted.output
    with TestClient(create_app(load_served(str(trained), "torch"))) as client:
        metadata = client.get("/metadata").json()
        files = [("files", (path.name, path.read_bytes(), "image/png")) for path in images]
        answer = client.post("/predict", files=files)
    assert answer.status_code == 200, answer.text
    assert metadata["thresholds"] == json.loads((trained / RunFolder.CONFIG).read_text())["thresholds"]
    served = [entry["labels"] for entry in answer.json()["predictions"]]
    assert served == [entry["labels"] for entry in json.loads(predicted.stdout)]
    assert len({tuple(labels) for labels in served}) > 1


def test_task_and_loss_mismatches_are_one_line(tmp_path: Path) -> None:
    root = shapes_canvas(tmp_path / "canvas", train=16, test=4)
    base = ["data.dataset=csv", f"data.root={root}", "model.backbone=mnist_cnn"]

    def setup(*overrides: str) -> None:
        recipe = recipes.from_dict({"name": "x", "model": {"backbone": "mnist_cnn"}, "data": {"dataset": "csv"}}, "t")
        stored = recipe.to_dict()
        recipes.apply_overrides(stored, [*base, *overrides])
        build_run(recipes.from_dict(stored, "t"), progress=False)

    with pytest.raises(ZooError, match="task = \"single_label\", but dataset 'csv' yields label sets"):
        setup("task=single_label")
    with pytest.raises(ZooError, match="loss.name = 'focal' takes one class an image"):
        setup("loss.name=focal")
    with pytest.raises(ZooError, match='data.sampler = "balanced" draws images by their one class'):
        setup("data.sampler=balanced")
    with pytest.raises(ZooError, match="data.per_class counts the images of each class"):
        setup("data.per_class=2")


class LabelSets:
    """A dataset plugin's object yielding label sets: ``targets`` a tuple of class indices per sample."""

    classes = ["a", "b", "c"]

    def __init__(self, targets: list, first_label: object = None) -> None:
        self.targets = targets
        self.first_label = targets[0] if first_label is None else first_label

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, object]:
        return torch.zeros(1, 4, 4), self.first_label if index == 0 else self.targets[index]


def test_the_dataset_contract_takes_label_sets_and_names_bad_ones() -> None:
    assert check_dataset("sets", LabelSets([(0, 2), (), (1,)])).label_sets
    with pytest.raises(ContractError, match=r"`targets` must hold one set of labels in 0..2 per sample \(2\)"):
        check_dataset("sets", LabelSets([(0, 3), (1,)]))
    with pytest.raises(ContractError, match=r"`targets` must hold one set of labels"):
        check_dataset("sets", LabelSets([(0,), ("b",)]))
    with pytest.raises(ContractError, match=r"dataset\[0\]'s label must be a set of ints in 0..2, not 1"):
        check_dataset("sets", LabelSets([(0,), (1,)], first_label=1))


def test_mixup_and_cutmix_mix_multi_hot_rows() -> None:
    from zoo.config.schema import DataConfig
    from zoo.training.loop import _mixing

    targets = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1], [1, 1, 0, 0]], dtype=torch.float32)
    for alphas in ({"mixup": 0.8}, {"cutmix": 1.0}):
        images = torch.rand(4, 1, 8, 8)
        mix = _mixing(DataConfig(dataset="csv", **alphas), 4, multi_hot=True)
        _, mixed = mix(images.clone(), targets)
        share = float(mixed[0, 2])  # label 2 is row 0's alone, not its partner's (row 3): the mixing share
        assert mixed.shape == (4, 4) and 0.0 < share < 1.0 and mixed[0, 0] == pytest.approx(1.0)  # both hold 0
        assert torch.allclose(mixed, share * targets + (1 - share) * targets.flip(0))
