from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.config.schema import OptimConfig, ScheduleConfig
from zoo.models import freeze
from zoo.training.optim import build_optimizer, lr_factor, set_lr


def factors(name: str, total: int = 100, per_epoch: int = 10, **options: float) -> list[float]:
    config = ScheduleConfig(name=name, **options)
    return [lr_factor(config, step, total, per_epoch) for step in range(total)]


def test_step_schedule_decays_every_step_size_epochs() -> None:
    values = factors("step", step_size=2, gamma=0.5)
    assert values[0] == values[19] == 1.0
    assert values[20] == 0.5 and values[40] == 0.25


def test_cosine_warms_up_then_anneals_to_the_floor() -> None:
    values = factors("cosine", warmup_epochs=1, min_lr_mult=0.1)
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_onecycle_rises_to_one_then_falls_far_below_the_start() -> None:
    values = factors("onecycle", pct_start=0.3)
    assert values[0] == pytest.approx(1 / 25)
    assert max(values) == pytest.approx(1.0, abs=1e-3) and values.index(max(values)) == 30
    assert values[-1] < values[0] / 100


def test_warmup_then_constant_and_none() -> None:
    assert factors("warmup", warmup_epochs=0.5)[:6] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert set(factors("none")) == {1.0}


def test_head_and_backbone_groups_get_their_own_rates() -> None:
    model = torch.nn.Module()
    model.backbone = torch.nn.Linear(3, 4)
    model.head = torch.nn.Linear(4, 2)
    model.backbone.bias.requires_grad_(False)
    groups = freeze.param_groups(model, lr=0.01, backbone_lr_mult=0.1)
    optimizer = build_optimizer(OptimConfig(name="sgd", lr=0.01, momentum=0.9), groups, torch.device("cpu"))
    by_name = {group["name"]: group for group in optimizer.param_groups}
    assert by_name["head"]["lr"] == 0.01 and by_name["backbone"]["lr"] == pytest.approx(0.001)
    assert by_name["backbone"]["params"] == [model.backbone.weight]  # the frozen bias is not in the optimiser
    assert by_name["head"]["momentum"] == 0.9
    set_lr(optimizer, 0.5)
    assert by_name["backbone"]["lr"] == pytest.approx(0.0005)


# FSDP2's parameters in a one-process group: DTensors, as each rank's are under `--nproc N`.
SHARDED_STEP = """
import sys
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from zoo.config.schema import OptimConfig
from zoo.training.optim import OPTIMIZERS, build_optimizer

dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}", rank=0, world_size=1)
for name in OPTIMIZERS:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    fully_shard(model)
    before = [p.full_tensor().clone() for p in model.parameters()]
    optimizer = build_optimizer(OptimConfig(name=name, lr=0.1), [{"params": list(model.parameters())}],
                                torch.device("cpu"), sharded=True)
    model(torch.randn(3, 4)).square().sum().backward()
    optimizer.step()
    moved = all(not torch.equal(p.full_tensor(), old) for p, old in zip(model.parameters(), before))
    print(name, bool(optimizer.defaults.get("fused")), moved)
dist.destroy_process_group()
"""


def test_sharded_parameters_step_with_every_optimiser(tmp_path: Path) -> None:
    """Fused where DTensor has a rule for the fused kernel (Adam, AdamW); SGD, which has none (a
    NotImplementedError at the first step under FSDP), and Adadelta step foreach."""
    ran = subprocess.run([sys.executable, "-c", SHARDED_STEP, str(tmp_path / "store")], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split("\n")[:-1] == ["sgd False True", "adam True True", "adamw True True", "adadelta False True"]
