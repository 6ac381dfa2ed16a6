"""The best epoch, not the last: train.monitor, train.keep, train.early_stop, train.ema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import RECIPES
from hypothesis import given
from hypothesis import strategies as st

from zoo.config import recipe as recipes
from zoo.runs.folder import RunFolder
from zoo.training import checkpoint
from zoo.training.monitor import Monitor
from zoo.training.runner import run

values = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=30)


@given(values, st.sampled_from(["val_accuracy", "val_loss"]))
def test_the_best_is_the_first_extreme_and_staleness_counts_evaluations_since(series: list[float], metric: str) -> None:
    monitor = Monitor(metric)
    for epoch, value in enumerate(series, start=1):
        monitor.update({"epoch": epoch, "step": 10 * epoch, metric: value})
    extreme = min(series) if metric == "val_loss" else max(series)
    first = series.index(extreme) + 1
    assert (monitor.best.epoch, monitor.best.step, monitor.best.value) == (first, 10 * first, extreme)
    assert monitor.stale == len(series) - first


@given(values, st.floats(0.0, 0.5), st.integers(1, 5))
def test_a_margin_only_delays_the_reset_and_the_state_survives_a_checkpoint(
    series: list[float], margin: float, patience: int
) -> None:
    strict, lenient = Monitor("val_f1", margin, patience), Monitor("val_f1", 0.0, patience)
    for epoch, value in enumerate(series, start=1):
        record = {"epoch": epoch, "step": epoch, "val_f1": value}
        strict.update(record)
        lenient.update(record)
        assert strict.stale >= lenient.stale and strict.best == lenient.best
    restored = Monitor("val_f1", margin, patience)
    restored.restore(strict.state())
    assert (restored.best, restored.stale, restored.should_stop) == (strict.best, strict.stale, strict.should_stop)


def test_steady_gains_each_below_min_delta_add_up_and_do_not_stop_the_run() -> None:
    monitor = Monitor("val_accuracy", min_delta=0.01, patience=3)
    for epoch, value in enumerate([0.80, 0.806, 0.812, 0.818, 0.824, 0.830, 0.830, 0.830], start=1):
        monitor.update({"epoch": epoch, "step": epoch, "val_accuracy": value})
        assert not monitor.should_stop or epoch == 8  # 0.812 and 0.824 each beat the last clear gain by > 0.01
    assert (monitor.stale, monitor.should_stop, monitor.best.epoch) == (3, True, 6)


@given(values, st.floats(0.0, 0.5), st.sampled_from(["val_accuracy", "val_loss"]))
def test_staleness_counts_evaluations_since_a_value_beat_the_last_clear_gain_by_min_delta(
    series: list[float], margin: float, metric: str
) -> None:
    monitor = Monitor(metric, margin)
    last_clear = None
    for epoch, value in enumerate(series, start=1):
        monitor.update({"epoch": epoch, "step": epoch, metric: value})
        reference = None if last_clear is None else series[last_clear]
        if reference is None or (value < reference - margin if metric == "val_loss" else value > reference + margin):
            last_clear = epoch - 1
        assert monitor.stale == epoch - 1 - last_clear
    restored = Monitor(metric, margin)
    restored.restore(monitor.state())
    assert (restored.stale, restored.reference) == (monitor.stale, monitor.reference)


def test_epochs_without_the_metric_are_not_evaluations() -> None:
    monitor = Monitor("val_accuracy", patience=1)
    assert monitor.update({"epoch": 1, "step": 1, "val_accuracy": 0.5})
    assert not monitor.update({"epoch": 2, "step": 2, "train_loss": 0.1})  # train.eval_every skipped it
    assert monitor.stale == 0 and not monitor.should_stop


# Two good epochs on the head alone, then the whole backbone at 100x the rate: accuracy collapses.
COLLAPSE = [
    "data.classes=[0,1,2]", "data.per_class=100", "data.val_split=0.2", "data.batch_size=16",
    "schedule.name=none", "model.freeze.freeze=['backbone']", "train.precision=fp32",
    "model.freeze.stages=[{epoch=3, unfreeze=['backbone'], lr_mult=100}]", "train.epochs=4",
]  # fmt: skip


def history(folder: RunFolder) -> list[dict]:
    return [json.loads(line) for line in folder.file(RunFolder.METRICS).read_text().splitlines()]


def run_mnist(tmp_path: Path, name: str, *overrides: str) -> RunFolder:
    recipe = recipes.load(RECIPES / "mnist.toml", [*COLLAPSE, *overrides, f"output.dir={tmp_path / name}"])
    return RunFolder(run(recipe, progress=False).folder)


@pytest.mark.slow
def test_the_run_keeps_the_best_epochs_weights_bit_for_bit(mnist_dir: Path, tmp_path: Path) -> None:
    best, last = run_mnist(tmp_path, "best"), run_mnist(tmp_path, "last", "train.keep=last")
    records = history(best)
    accuracies = [record["val_accuracy"] for record in records]
    results = best.results
    assert accuracies.index(max(accuracies)) + 1 == results.kept_epoch < 4  # the collapse came after it
    assert (results.kept, results.monitor, results.kept_value) == ("best", "val_accuracy", max(accuracies))
    # Its checkpoint outlived keep_checkpoints = 2, and the run folder holds exactly its weights.
    step = records[results.kept_epoch - 1]["step"]
    tensors, _ = checkpoint.load(best.checkpoint_root / f"step-{step:08d}")
    kept = best.weights()
    assert all(torch.equal(kept[name], tensors[f"model.{name}"]) for name in kept)
    assert len(best.checkpoints) == 3  # the best and the newest two
    assert last.results.kept_epoch == 4 and last.results.test["accuracy"] < results.test["accuracy"] - 0.1


@pytest.mark.slow
def test_early_stop_ends_a_finished_run_and_says_why(mnist_dir: Path, tmp_path: Path) -> None:
    folder = run_mnist(tmp_path, "stopped", "train.epochs=8", "train.early_stop={patience=2}")
    results = folder.results
    assert (results.state, results.stopped_early, results.epochs) == ("finished", True, results.kept_epoch + 2)
    assert results.reason.startswith("stopped early: val_accuracy did not improve in 2 evaluation(s)")
    assert results.test is not None


@pytest.mark.slow
def test_ema_weights_are_evaluated_and_kept(mnist_dir: Path, tmp_path: Path) -> None:
    folder = run_mnist(tmp_path, "ema", "train.ema=0.9", "train.keep=last", "train.epochs=2",
                       "model.freeze.stages=[]")  # fmt: skip
    tensors, _ = checkpoint.load(folder.checkpoints[-1])
    kept = folder.weights()
    assert all(torch.equal(kept[name], tensors[f"ema.{name}"]) for name in kept)
    assert not torch.equal(tensors["ema.head.0.weight"], tensors["model.head.0.weight"])


def test_a_tie_in_accuracy_goes_to_the_lower_validation_loss() -> None:
    monitor = Monitor("val_accuracy")
    for epoch, (accuracy, loss) in enumerate([(0.9, 0.5), (0.95, 0.4), (0.95, 0.2), (0.95, 0.3), (0.9, 0.1)], 1):
        monitor.update({"epoch": epoch, "step": epoch, "val_accuracy": accuracy, "val_loss": loss})
    assert (monitor.best.epoch, monitor.best.tiebreak, monitor.stale) == (3, 0.2, 3)  # a tie is no clear gain
    restored = Monitor("val_accuracy")
    restored.restore(monitor.state())
    assert restored.best == monitor.best


@pytest.mark.parametrize(
    "damaged",
    [
        {"best": {"epoch": "3", "step": 3, "value": 0.9, "tiebreak": None}, "stale": 0},
        {"best": {"epoch": 3, "step": 3, "value": "high", "tiebreak": None}, "stale": 0},
        {"best": {"epoch": 3, "step": 3}, "stale": 0},
        {"best": [3, 3, 0.9], "stale": 0},
        {"best": None, "stale": -1},
        {"best": None, "stale": True},
    ],
)
def test_a_damaged_monitor_state_is_refused_not_half_restored(damaged: dict) -> None:
    """A checkpoint's state.json edited or damaged: resume says so (load_checkpoint turns this into one line)."""
    monitor = Monitor("val_accuracy")
    with pytest.raises(ValueError, match="monitor state is damaged"):
        monitor.restore(damaged)
    assert monitor.best is None and monitor.stale == 0
