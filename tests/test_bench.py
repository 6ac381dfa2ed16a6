"""The benchmarks' own checks that can run anywhere, so that they cannot rot between GPU machines."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, REPO
from torch.utils._python_dispatch import TorchDispatchMode

from zoo.config import recipe as recipes
from zoo.training.runner import run

spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_the_gpu_check_lists_what_it_measures_and_its_recipes_still_load(mnist_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    for check in ("mnist auto precision", "mnist bf16", "mnist fp16", "mnist compile", "timm 224 px", "model alone"):
        assert check in result.stdout, check


def test_the_export_bench_verifies_then_times_both_sides() -> None:
    arguments = ["--models", "mnist_cnn", "test_resnet", "--size", "32", "--batch", "4", "--calls", "3"]  # fmt: skip
    arguments += ["--repeats", "1"]
    bench = REPO / "bench" / "export_bench.py"
    result = subprocess.run([sys.executable, str(bench), *arguments], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith(("| mnist", "| test"))]
    assert [row[0].strip() for row in rows] == ["mnist_cnn", "test_resnet"]
    for row in rows:  # every figure measured, every ratio the quotient of the two beside it
        eager_ms, served_ms, latency_ratio = float(row[2]), float(row[3]), float(row[4].strip(" x"))
        assert eager_ms > 0 and served_ms > 0
        low, high = (eager_ms - 0.005) / (served_ms + 0.005), (eager_ms + 0.005) / max(served_ms - 0.005, 1e-9)
        assert low - 0.005 <= latency_ratio <= high + 0.005  # the figures are printed rounded
    assert result.stderr.count("verified") == 2


class ReadBack(TorchDispatchMode):
    """On the CPU, what CUDA's sync debug mode warns at: a tensor's value read by the host (.item(), int())."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func is torch.ops.aten._local_scalar_dense.default:
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=2)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def cuda_sync_warnings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode`` as on a GPU, for the CPU: "warn" warns at each read-back."""
    modes: list[ReadBack] = []

    def set_sync_debug_mode(mode: int | str) -> None:
        if mode == "warn":
            modes.append(ReadBack())
            modes[-1].__enter__()
        elif modes:
            modes.pop().__exit__(None, None, None)

    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", set_sync_debug_mode)
    yield
    assert not modes  # every watch was closed


def test_a_host_sync_in_a_steady_state_step_fails_the_check(cuda_sync_warnings: None) -> None:
    x = torch.randn(16)
    syncs = gpu_check.HostSyncs()
    for _ in gpu_check.watched(range(3), [syncs]):
        (x * 2).sum()
    assert syncs.count == 0 and gpu_check.no_host_syncs({"host_syncs": syncs.count}) is None
    for _ in gpu_check.watched(range(3), [syncs]):
        (x * 2).sum().item()  # one read-back a step
    assert syncs.count == 3
    assert gpu_check.no_host_syncs({"host_syncs": syncs.count}) == "3 host syncs in steady-state steps"
    (x * 2).sum().item()  # outside the watched steps: not counted
    assert syncs.count == 3


def test_a_function_that_recompiles_per_shape_fails_the_check() -> None:
    torch._dynamo.reset()
    double = torch.compile(lambda x: x * 2 + 1, backend="eager", dynamic=False)
    double(torch.randn(4))  # the warm-up compiles, unwatched
    recompiles = gpu_check.Recompiles()
    for _ in gpu_check.watched(range(3), [recompiles]):
        double(torch.randn(4))
    assert gpu_check.no_recompiles({"recompiles": recompiles.count}) is None
    for size in gpu_check.watched([5, 6, 7], [recompiles]):
        double(torch.randn(size))  # a new shape each step: a graph each
    assert recompiles.count == 3
    assert gpu_check.no_recompiles({"recompiles": 3}) == "3 graphs compiled in steady-state steps"


@pytest.mark.parametrize(("log_every", "syncs"), [(100000, 0), (1, 8)])
def test_a_zoo_run_is_watched_over_its_training_steps_after_the_first_epoch(
    log_every: int, syncs: int, cuda_sync_warnings: None, mnist_dir: Path, tmp_path: Path
) -> None:
    """zoo's step reads nothing back; train.log_every=1 reads back the loss watch and the bar's loss
    at each of epoch 2's 4 steps, the last of which ends the run (and the watched steps) with a `break`.

    SGD: its steps take Python numbers (Adam's step counts are CPU tensors, read back without a GPU sync).
    """
    overrides = ["data.classes=[0,1]", "data.per_class=16", "data.batch_size=8", "data.val_split=0",
                 "train.epochs=2", "optim.name=sgd", f"train.log_every={log_every}", f"output.dir={tmp_path / 'run'}"]  # fmt: skip
    watch = gpu_check.HostSyncs()
    with gpu_check.steady_training_steps([watch]):
        run(recipes.load(RECIPES / "mnist.toml", overrides), progress=False)
    assert watch.count == syncs
    verdict = gpu_check.Check("x", RECIPES / "mnist.toml", [], "").verdict({"host_syncs": watch.count, "recompiles": 0})
    assert verdict == (None if syncs == 0 else f"{syncs} host syncs in steady-state steps")


def test_a_two_rank_run_passes_only_finished_with_its_ranks_agreeing() -> None:
    good = {"state": "finished", "world_size": 2, "ranks_agree": True}
    assert gpu_check.ranks_agree(good) is None
    for bad in ({**good, "ranks_agree": False}, {**good, "state": "running"}, {**good, "world_size": 1}):
        assert gpu_check.ranks_agree(bad) == f"results.json: {bad}"
    assert gpu_check.ranks_agree(json.loads("{}")) is not None


def test_each_check_fails_on_any_of_accuracy_host_syncs_and_recompiles() -> None:
    check = next(check for check in gpu_check.CHECKS if check.name == "mnist compile")
    fine = {"test_acc": 0.991, "host_syncs": 0, "recompiles": 0}
    assert check.verdict(fine) is None
    assert check.verdict({**fine, "test_acc": 0.989}) == "test accuracy 0.9890 < 0.99"
    assert check.verdict({**fine, "host_syncs": 2, "recompiles": 1}) == (
        "2 host syncs in steady-state steps; 1 graphs compiled in steady-state steps"
    )


@pytest.mark.parametrize("script", sorted(path.name for path in (REPO / "bench").glob("*.py")))
def test_every_zoo_name_a_bench_script_imports_exists(script: str) -> None:
    """Bench scripts import inside functions that only a GPU or a long run reaches: a moved name shows here."""
    import ast
    import importlib

    missing = []
    for node in ast.walk(ast.parse((REPO / "bench" / script).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "zoo":
            module = importlib.import_module(node.module)
            missing += [f"{node.module}.{alias.name}" for alias in node.names if not _importable(module, alias.name)]
    assert not missing, missing


def _importable(module: object, name: str) -> bool:
    import importlib

    if hasattr(module, name):
        return True
    try:
        importlib.import_module(f"{module.__name__}.{name}")
    except ModuleNotFoundError:
        return False
    return True


def test_the_step_bench_contenders_train_exactly_the_steps_asked(mnist_dir: Path) -> None:
    """bench/step_bench.py times chunks of steps: each contender must train that many, on full batches,
    and zoo's through its own Trainer (its step count and weights move)."""
    spec = importlib.util.spec_from_file_location("step_bench", REPO / "bench" / "step_bench.py")
    step_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_bench)
    zoo_steps = step_bench.ZooSteps(step_bench.CLASSIC)
    before = [p.detach().clone() for p in zoo_steps.trainer.model.parameters()]
    contenders = {"zoo": zoo_steps, "classic": step_bench.ClassicSteps(step_bench.CLASSIC)}
    result = step_bench.interleaved(contenders, chunk=2, rounds=1)
    assert zoo_steps.trainer.step == 4  # a warm-up round and a timed one, 2 steps each
    assert all(not torch.equal(a, b) for a, b in zip(before, zoo_steps.trainer.model.parameters()))
    assert result["zoo"] > 0 and result["classic"] > 0 and result["ratio"] == result["zoo"] / result["classic"]
    hand = step_bench.HandSteps(["data.batch_size=8"])
    assert hand.run(3) == 24 and hand.step == 3
    # The kernel table's sides: zoo's fused AdamW, and the same optimiser over the same groups foreach.
    fused, foreach = step_bench.ZooSteps(["data.batch_size=8"]), step_bench.ZooSteps(["data.batch_size=8"], True)
    kernels = [(side.trainer.optimizer.defaults["fused"], side.trainer.optimizer.defaults["foreach"]) for side in (fused, foreach)]  # fmt: skip
    assert kernels == [(True, None), (None, True)]
    assert [{**group, "params": None, "fused": None, "foreach": None} for group in foreach.trainer.optimizer.param_groups] == [
        {**group, "params": None, "fused": None, "foreach": None} for group in fused.trainer.optimizer.param_groups
    ]  # fmt: skip
    assert foreach.run(2) == 16 and foreach.trainer.step == 2
    assert step_bench.allocator_child("8:fp32", kept=False, chunk=4) > 0  # the allocator table's side, unset


def test_the_mnist_bench_scores_each_epoch_of_zoos_runner_and_of_the_loop(mnist_dir: Path) -> None:
    """bench/mnist_bench.py's contenders, a few steps each in their own processes as the bench runs them."""
    bench = [sys.executable, str(REPO / "bench" / "mnist_bench.py"), "--epochs", "1", "--max-steps", "3"]
    for contender in ("zoo:mnist.toml", "loop"):
        result = subprocess.run([*bench, "--contender", contender], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        measured = json.loads(result.stdout.splitlines()[-1])
        assert [epoch["images"] for epoch in measured["epochs"]] == [3 * 256], contender
        assert 0.0 < measured["epochs"][0]["test_accuracy"] < 1.0 and measured["peak_mb"] > 0


@pytest.mark.slow
def test_the_adapter_bench_counts_what_trains_and_what_is_shared(mnist_dir: Path) -> None:
    """The adapter bench at a tiny size: both runs finish, and its LoRA row counts exactly the adapter and head."""
    import math
    import re

    import timm

    arguments = ["--backbone", "timm/test_vit", "--pretrain-per-class", "10", "--per-class", "6",
                 "--pretrain-epochs", "1", "--epochs", "1", "--rank", "2", "--target", "qkv"]  # fmt: skip
    bench = REPO / "bench" / "adapter_bench.py"
    result = subprocess.run([sys.executable, str(bench), *arguments], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith(("| full", "| LoRA"))]
    assert len(rows) == 2
    counted = [int(re.match(r"\s*([\d,]+)", row[1]).group(1).replace(",", "")) for row in rows]
    vit = timm.create_model("test_vit", img_size=32, in_chans=1, num_classes=5)
    qkv = [module for name, module in vit.named_modules() if name.endswith("attn.qkv")]
    adapter = sum(2 * (layer.in_features + layer.out_features) for layer in qkv)  # r = 2: A is 2 x in, B out x 2
    head = sum(math.prod(parameter.shape) for parameter in vit.head.parameters())
    assert counted == [sum(p.numel() for p in vit.parameters()), adapter + head]
    assert "targets: trainable" in result.stdout and "; CPU: " in result.stdout
