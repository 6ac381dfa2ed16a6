"""The device, the autocast precision that suits it, the backend settings a run uses and the host
allocator's; the CUDA choices checked on the CPU where they can be (what a GPU would be given, not
what it does)."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, NotInMemory

from zoo.config.schema import DataConfig, OptimConfig
from zoo.data.batches import Batches
from zoo.data.preprocessing import Preprocessing
from zoo.data.splits import load_splits
from zoo.errors import ZooError
from zoo.parallel.device import autocast_dtype, configure, keep_freed_host_memory, resolve_device
from zoo.training.optim import build_optimizer

MNIST_INPUT = Preprocessing((1, 28, 28), (0.1307,), (0.3081,))


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, None)],
)
def test_auto_precision_on_the_cpu_is_bf16_only_where_native(
    avx512_bf16: bool, amx: bool, expected: torch.dtype | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert autocast_dtype("auto", torch.device("cpu")) is expected
    assert autocast_dtype("auto", torch.device("mps")) is None


def test_explicit_precision_choices_are_kept() -> None:
    cpu = torch.device("cpu")
    assert (autocast_dtype("bf16", cpu), autocast_dtype("fp16", cpu), autocast_dtype("fp32", cpu)) == (
        torch.bfloat16,
        torch.float16,
        None,
    )


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_precision_on_cuda_is_bf16_only_where_native(
    native_bf16: bool, expected: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def supported(including_emulation: bool = True) -> bool:
        calls.append(including_emulation)
        return native_bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert autocast_dtype("auto", torch.device("cuda")) is expected
    assert calls == [False]  # emulated bf16 is slower than fp16 with a scaler


def test_deterministic_runs_warn_instead_of_failing_on_ops_without_deterministic_kernels() -> None:
    try:
        configure(torch.device("cpu"), deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        configure(torch.device("cpu"), deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_missing_device_is_one_line() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the CI machines have none; the GPU check covers CUDA
    with pytest.raises(ZooError, match="train.device = 'cuda', but this machine has no CUDA device"):
        resolve_device("cuda")


def test_cuda_runs_use_tf32_and_cudnn_benchmark_unless_deterministic() -> None:
    """Only the flags: settable without a GPU, as on one."""
    flags = (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"), (torch.backends.cudnn, "benchmark")  # fmt: skip
    saved = [getattr(owner, name) for owner, name in flags] + [torch.backends.cudnn.deterministic]
    try:
        configure(torch.device("cuda"), deterministic=False)
        assert [getattr(owner, name) for owner, name in flags] == [True, True, True]
        assert not torch.backends.cudnn.deterministic
        configure(torch.device("cuda"), deterministic=True)
        assert [getattr(owner, name) for owner, name in flags] == [False, False, False]
        assert torch.backends.cudnn.deterministic
    finally:
        for (owner, name), value in zip(flags, saved, strict=False):
            setattr(owner, name, value)
        torch.backends.cudnn.deterministic = saved[-1]
        configure(torch.device("cpu"), deterministic=False)


@pytest.mark.parametrize(("name", "fused"), [("adamw", True), ("adam", True), ("sgd", True), ("adadelta", False)])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_optimisers_are_fused_where_torch_has_the_kernel(name: str, fused: bool, device: str) -> None:
    config = OptimConfig(name=name, lr=0.1)
    groups = [{"params": [torch.nn.Parameter(torch.zeros(3))], "base_lr": 0.1}]
    optimizer = build_optimizer(config, groups, torch.device(device))
    assert bool(optimizer.defaults.get("fused")) is fused
    assert optimizer.defaults["foreach"] is (None if fused else True)


def test_batches_for_a_cuda_device_come_pinned_and_are_copied_without_waiting(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dataset read by a DataLoader (not in memory) for a CUDA device: page-locked batches, copied
    with non_blocking=True (the copies overlap compute). The copies are recorded, not made."""
    splits = load_splits(DataConfig(dataset="mnist", classes=[4, 9], per_class=6, val_split=0.0), seed=0)
    splits.train.dataset = NotInMemory(splits.train.dataset)
    batches = Batches(splits.train, 4, torch.device("cpu"), MNIST_INPUT, shuffle=True, num_workers=0)
    batches.device = torch.device("cuda")
    copies = []
    to = torch.Tensor.to

    def recorded(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            copies.append(kwargs.get("non_blocking", False))
            return tensor
        return to(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recorded)
    with pytest.warns(UserWarning, match="pin_memory"):  # this machine has no GPU to pin memory for
        assert len(list(batches.epoch(1))) == 3
    assert batches.loader.pin_memory is True
    assert copies == [True] * 6  # images and labels of 3 batches


# A few training steps of the MNIST CNN at batch 32 in a fresh process; prints the page faults the median
# step takes once warm (its memory paged in again: what keep_freed_host_memory stops).
FAULTS_PER_STEP = """
import ctypes, resource, sys
import torch
from torch import nn
import zoo
from zoo.parallel.device import keep_freed_host_memory

ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages, so that faults count alike on any host
if sys.argv[1] == "kept":
    assert keep_freed_host_memory()
torch.manual_seed(0)
backbone = zoo.create_model("mnist_cnn")
model = nn.Sequential(backbone, nn.Linear(backbone.num_features, 10))
optimizer = torch.optim.AdamW(model.parameters())
images, labels = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))

def step():
    nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

for _ in range(3):
    step()
faults = []
for _ in range(15):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[len(faults) // 2])  # the median step's: a page the host reclaimed now and then is not the setting's
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a setting of glibc's malloc")
def test_kept_host_memory_stops_each_step_paging_its_memory_in_again() -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD") and not k.startswith("MALLOC_")
    }
    command = [sys.executable, "-c", FAULTS_PER_STEP]
    faults = {
        mode: float(subprocess.run([*command, mode], env=env, check=True, capture_output=True, text=True).stdout)
        for mode in ("default", "kept")
    }
    assert faults["default"] > 500, faults  # glibc's default: the activations' memory faulted in every step
    assert faults["kept"] * 20 < faults["default"], faults


@pytest.mark.parametrize(
    ("variable", "value"),
    [("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"), ("MALLOC_MMAP_THRESHOLD_", "65536"),
     ("MALLOC_ARENA_MAX", "2"), ("MALLOC_PERTURB_", ""), ("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")],
)  # fmt: skip
def test_an_allocator_or_malloc_settings_the_user_chose_are_left_alone(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def mallopt_called(_: object) -> None:
        raise AssertionError("mallopt was called over the user's own settings")

    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(ctypes, "CDLL", mallopt_called)
    monkeypatch.setenv(variable, value)
    assert keep_freed_host_memory() is False
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))  # another allocator: nothing to set either
    monkeypatch.delenv(variable)
    assert keep_freed_host_memory() is False


def test_zoo_run_and_zoo_eval_keep_freed_host_memory(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import zoo.parallel.device
    from zoo.cli import cli

    kept = []
    monkeypatch.setattr(zoo.parallel.device, "keep_freed_host_memory", lambda: kept.append(True) or True)
    tiny = ["data.classes=[1,7]", "data.per_class=8", "train.epochs=1", "output.dir=tiny"]
    trained = CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), *tiny, "--quiet"])
    assert trained.exit_code == 0, trained.output
    assert kept == [True]
    evaluated = CliRunner().invoke(cli, ["eval", "tiny", "--json", "--errors", "errors.csv"])
    assert evaluated.exit_code == 0, evaluated.output
    assert kept == [True, True]
