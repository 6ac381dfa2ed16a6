"""Trainer.fit: the epoch loop, its history and logs, checkpoints, and Ctrl-C, on a few MNIST images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, sabotaged_loss
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.config import recipe as recipes
from zoo.errors import ZooError
from zoo.runs.folder import RunFolder
from zoo.training import checkpoint
from zoo.training.loop import Trainer
from zoo.training.setup import build_run

TINY = ["data.classes=[0,1]", "data.per_class=24", "data.val_split=0.2", "data.batch_size=8", "train.precision=fp32"]


def trainer_for(tmp_path: Path, *overrides: str) -> Trainer:
    recipe = recipes.load(RECIPES / "mnist.toml", [*TINY, *overrides])
    return Trainer(build_run(recipe, progress=False), RunFolder(tmp_path / "run"))


def test_fit_trains_every_epoch_validates_logs_and_checkpoints(mnist_dir: Path, tmp_path: Path) -> None:
    trainer = trainer_for(tmp_path, "train.epochs=2")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    assert trainer.fit(progress=False) == ("finished", "")
    assert [record["epoch"] for record in trainer.history] == [1, 2]
    assert trainer.step == trainer.total_steps == 2 * trainer.steps_per_epoch == 2 * 6  # 48 images, batch 8
    assert all({"train_loss", "val_loss", "val_accuracy", "val_f1"} <= set(record) for record in trainer.history)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == trainer.history
    assert [p.name for p in trainer.folder.checkpoints] == ["step-00000006", "step-00000012"]
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert len(trainer.learning_rates()) == trainer.total_steps


def test_a_resumed_run_counts_the_time_its_earlier_sessions_trained(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = trainer_for(tmp_path, "train.epochs=2", "train.max_steps=6")
    first.fit(progress=False)
    [saved] = first.folder.checkpoints
    _, state = checkpoint.load(saved)
    assert 0 < state["seconds"] <= first.seconds()

    resumed = trainer_for(tmp_path, "train.epochs=2")
    resumed.load_checkpoint(saved)
    resumed.fit(progress=False)
    total = resumed.seconds()
    assert total > state["seconds"] + (resumed.history[-1]["seconds"])  # both sessions' epochs, and more

    def damaged(*args: object, **kwargs: object) -> tuple[dict, dict]:
        tensors, state = load_own(*args, **kwargs)
        return tensors, state | {"seconds": "an hour"}

    load_own = checkpoint.load_own
    monkeypatch.setattr(checkpoint, "load_own", damaged)
    with pytest.raises(ZooError, match="does not fit this run \\(its seconds trained, 'an hour', is no time\\)"):
        trainer_for(tmp_path, "train.epochs=2").load_checkpoint(saved)


def test_gradient_accumulation_and_max_steps_count_optimiser_steps(mnist_dir: Path, tmp_path: Path) -> None:
    trainer = trainer_for(tmp_path, "train.epochs=3", "train.grad_accum=4", "train.max_steps=3")
    assert trainer.steps_per_epoch == 2  # 6 batches, 4 to a step, the last step takes the 2 left
    assert trainer.fit(progress=False) == ("finished", "")
    assert trainer.step == 3 and [record["epoch"] for record in trainer.history] == [1, 2]


def test_each_accumulated_step_has_the_gradient_of_its_group_as_one_larger_batch(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """6 micro-batches of 8, 4 to a step: the steps' gradients are those of batches of 32 and of 16
    (the epoch's last group, short, is the mean over its own two micro-batches, not halved)."""
    trainer = trainer_for(
        tmp_path, "train.epochs=1", "train.grad_accum=4", "model.args.dropout1=0.0", "model.args.dropout2=0.0"
    )
    micro_batches = list(trainer.batches.epoch(1))  # in memory, no augmentation: the epoch fit will see
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    step, groups = trainer._optimizer_step, []

    def step_checking_the_gradient() -> None:
        end = trainer.position
        group = micro_batches[(end - 1) // 4 * 4 : end]
        inputs, labels = (torch.cat(parts) for parts in zip(*group, strict=True))
        larger = torch.autograd.grad(trainer.loss_fn(trainer.model(inputs), labels), trainable)
        for accumulated, expected in zip((p.grad for p in trainable), larger, strict=True):
            torch.testing.assert_close(accumulated, expected, rtol=1e-4, atol=1e-6)
        groups.append(len(group))
        step()

    trainer._optimizer_step = step_checking_the_gradient
    assert trainer.fit(progress=False) == ("finished", "")
    assert groups == [4, 2]


def test_ctrl_c_stops_fit_as_interrupted_with_what_was_done(mnist_dir: Path, tmp_path: Path) -> None:
    def interrupt(call: int, loss: torch.Tensor) -> torch.Tensor:
        if call == 9:  # in the second epoch
            raise KeyboardInterrupt
        return loss

    with sabotaged_loss("interrupt_at_9", interrupt):
        trainer = trainer_for(tmp_path, "train.epochs=3", "loss.name=interrupt_at_9")
        state, reason = trainer.fit(progress=False)
    assert state == "interrupted" and reason == "stopped by Ctrl-C in epoch 2, after step 8"
    assert [record["epoch"] for record in trainer.history] == [1]


def test_a_failure_inside_fit_propagates(mnist_dir: Path, tmp_path: Path) -> None:
    def explode(call: int, loss: torch.Tensor) -> torch.Tensor:
        if call == 2:
            raise RuntimeError("a bug in a plugin")
        return loss

    with sabotaged_loss("explodes_at_2", explode), pytest.raises(RuntimeError, match="a bug in a plugin"):
        trainer_for(tmp_path, "loss.name=explodes_at_2").fit(progress=False)


def test_mixing_gives_the_loss_soft_targets_from_pairs_of_images(mnist_dir: Path, tmp_path: Path) -> None:
    trainer = trainer_for(tmp_path, "data.mixup=0.4", "data.cutmix=1.0")
    inputs, labels = next(trainer.batches.epoch(1))
    mixed, targets = trainer.mix(inputs.clone(), labels)
    assert targets.shape == (8, 2) and torch.allclose(targets.sum(1), torch.ones(8))
    assert not torch.equal(targets, torch.nn.functional.one_hot(labels, 2).float()) and not torch.equal(mixed, inputs)
    assert trainer.fit(progress=False)[0] == "finished"
    assert trainer_for(tmp_path).mix is None


@settings(max_examples=60, deadline=None)
@given(seconds=st.floats(0.001, 10.0), stop_after=st.integers(0, 100))
def test_under_ddp_the_ranks_check_for_ctrl_c_about_every_two_seconds_whatever_a_batch_takes(
    seconds: float, stop_after: int
) -> None:
    """Batches of ``seconds`` each on a fake clock, as one rank of two sees them (the collective is
    the identity here): checks come after the batch count agreed at the check before, at most
    STOP_CHECK_SECONDS apart (or one batch, when a batch is longer), and a Ctrl-C stops the run
    at the next check."""
    from zoo.parallel import distributed
    from zoo.training import stopping as trainer

    clock, checks = [0.0], []

    def agreed(tensor: torch.Tensor) -> torch.Tensor:
        checks.append(clock[0])
        return tensor

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer.time, "monotonic", lambda: clock[0])
        patch.setattr(distributed, "world_size", lambda: 2)
        patch.setattr(distributed, "max_across_ranks", agreed)
        stops = trainer.StopRequests()
        for batch in range(stop_after + 2 * int(trainer.STOP_CHECK_SECONDS / seconds) + 2):
            if batch == stop_after:
                stops.flag.fill_(1)  # SIGINT
                asked = clock[0]
            clock[0] += seconds
            try:
                stops.batch_done()
            except KeyboardInterrupt:
                break
        else:
            pytest.fail("Ctrl-C never stopped the run")
    longest = max(trainer.STOP_CHECK_SECONDS, seconds) * (1 + 1e-6)
    gaps = [later - earlier for earlier, later in zip([0.0, *checks], checks)]
    assert all(gap <= longest for gap in gaps), gaps
    assert all(gap > trainer.STOP_CHECK_SECONDS - seconds - 1e-6 for gap in gaps[1:-1]), gaps  # no needless checks
    assert clock[0] - asked <= longest


@pytest.mark.slow
def test_train_compile_trains_through_the_compiled_model(mnist_dir: Path, tmp_path: Path) -> None:
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.utils import counters

    trainer = trainer_for(tmp_path, "train.max_steps=3", "train.compile=true")
    assert isinstance(trainer.forward, OptimizedModule) and trainer.forward._orig_mod is trainer.model
    before = [p.detach().clone() for p in trainer.model.parameters()]
    graphs = counters["stats"]["unique_graphs"]
    assert trainer.fit(progress=False) == ("finished", "")
    assert counters["stats"]["unique_graphs"] > graphs  # the steps ran the compiled graph
    assert all(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


COMPILED_RUN_LOGS = f"""
import logging, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from test_trainer import trainer_for
from zoo.cli.group import route_library_output

route_library_output(verbose=False)  # as `zoo run` without --verbose
trainer_for(Path(sys.argv[1]), "train.compile=true")
logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found")
"""


@pytest.mark.parametrize("torch_logs", [None, "dynamo"])
def test_what_compiling_logs_shows_with_verbose_unless_torch_logs_asks(
    mnist_dir: Path, tmp_path: Path, torch_logs: str | None
) -> None:
    """torch's own stderr handler printed "No CUDA runtime is found" into a CPU run's output."""
    env = {name: value for name, value in os.environ.items() if name != "TORCH_LOGS"}
    env |= {"TORCH_LOGS": torch_logs} if torch_logs else {}
    result = subprocess.run([sys.executable, "-c", COMPILED_RUN_LOGS, str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert ("No CUDA runtime is found" in result.stderr) == bool(torch_logs)
