"""Nothing lost: checkpoints, exact resume after SIGKILL, NaN losses and full disks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import patch

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, assert_user_error, kill_then_resume, sabotaged_loss
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_safetensors

from zoo import _files
from zoo.cli import cli
from zoo.errors import ZooError
from zoo.parallel import distributed
from zoo.runs.folder import RunFolder
from zoo.training import checkpoint

pytestmark = pytest.mark.slow

# 3,000 images, 94 steps an epoch, two epochs: long enough to kill mid-epoch.
KILLABLE = [
    "data.per_class=300",
    "data.batch_size=32",
    "train.epochs=2",
    "train.checkpoint_every=10",
    "data.val_split=0.02",
]
SMALL = ["data.per_class=20", "data.classes=[0,1]", "data.batch_size=4", "data.val_split=0.1", "train.epochs=2"]


def zoo_run(*args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("zoo")), "run", str(RECIPES / "mnist.toml"), *args, "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def same_weights(a: Path, b: Path) -> bool:
    first, second = RunFolder(a).weights(), RunFolder(b).weights()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = zoo_run(*KILLABLE, f"output.dir={folder}")
    assert result.returncode == 0, result.stderr
    return folder


@pytest.mark.parametrize(
    "kill_after", ["step-00000030", "step-00000094", "step-00000120"], ids=["epoch-1", "epoch-end", "epoch-2"]
)
def test_sigkill_then_resume_is_bit_identical(kill_after: str, uninterrupted: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    command = [
        str(Path(sys.executable).with_name("zoo")),
        "run",
        str(RECIPES / "mnist.toml"),
        *KILLABLE,
        f"output.dir={folder}",
        "--no-progress",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (folder / "checkpoints" / kill_after).exists():
        assert process.poll() is None, f"the run ended before {kill_after}: {process.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads((folder / "results.json").read_text())["state"] == "running"
    assert not (folder / "model.safetensors").exists()
    trained_before = max(checkpoint.load(path)[1]["seconds"] for path in RunFolder(folder).checkpoints)

    started = time.monotonic()
    resumed = zoo_run(*KILLABLE, "--resume", str(folder))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    train_seconds = json.loads((folder / "results.json").read_text())["train_seconds"]
    assert trained_before < train_seconds < trained_before + time.monotonic() - started  # both sessions'
    assert same_weights(uninterrupted, folder)

    def lines(folder: Path) -> list[dict]:
        keys = ("epoch", "step", "train_loss", "val_loss")
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in record.items() if k in keys} for record in records]

    assert lines(folder) == lines(uninterrupted)
    assert (
        json.loads((folder / "results.json").read_text())["test"]
        == json.loads((uninterrupted / "results.json").read_text())["test"]
    )


def test_checkpoints_hold_the_whole_state_and_stay_bounded(uninterrupted: Path) -> None:
    kept = RunFolder(uninterrupted).checkpoints
    assert [p.name for p in kept] == ["step-00000180", "step-00000188"]  # keep_checkpoints = 2
    tensors, state = checkpoint.load(kept[-1])
    assert {"rng.torch", "loss_sum", "model.head.0.weight"} <= tensors.keys()
    assert any(name.startswith("optim.") for name in tensors)
    assert (state["epoch"], state["position"], state["step"]) == (3, 0, 188)
    assert set(state["rng"]) == {"python", "numpy"} and len(state["history"]) == 2
    assert not list(uninterrupted.rglob(".*"))  # no temporary files or folders left


def test_resume_the_newest_run_and_train_longer(mnist_dir: Path) -> None:
    first = zoo_run(*SMALL)
    assert first.returncode == 0, first.stderr
    longer = zoo_run(*SMALL, "--resume", "train.epochs=3")
    assert longer.returncode == 0, longer.stderr
    [folder] = list(Path("runs").iterdir())
    assert f"resuming {folder}" in longer.stdout
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert json.loads((folder / "results.json").read_text())["epochs"] == 3


def test_resume_refuses_a_different_recipe(mnist_dir: Path, tmp_path: Path) -> None:
    assert zoo_run(*SMALL, f"output.dir={tmp_path / 'run'}").returncode == 0
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(RECIPES / "mnist.toml"),
            *SMALL,
            "optim.lr=0.1",
            "data.batch_size=8",
            "--resume",
            str(tmp_path / "run"),
        ],
    )
    assert_user_error(
        result,
        "differs from the run",
        "data.batch_size, optim.lr",
        "only train.epochs, train.max_steps and where it logs",
        f"go on with the run's own recipe, `zoo run {tmp_path / 'run' / 'recipe.toml'} --resume {tmp_path / 'run'}`",
    )
    assert_user_error(
        CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), "--resume"]),
        "no run of 'mnist' with a checkpoint under runs/",
    )


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(mnist_dir: Path, tmp_path: Path) -> None:
    with sabotaged_loss("explodes", lambda call, loss: loss * float("nan") if call >= 13 else loss):
        result = CliRunner().invoke(
            cli,
            [
                "run",
                str(RECIPES / "mnist.toml"),
                *SMALL,
                "loss.name=explodes",
                "train.checkpoint_every=5",
                f"output.dir={tmp_path / 'run'}",
                "--no-progress",
            ],
        )
    line = assert_user_error(result, "the loss became NaN or infinite at step 13", "lower optim.lr", "step-00000010")
    assert "step-00000010" in line
    state = json.loads((tmp_path / "run" / "results.json").read_text())
    assert state["state"] == "failed" and "NaN" in state["reason"]
    assert not (tmp_path / "run" / "model.safetensors").exists()
    tensors, _ = checkpoint.load(tmp_path / "run" / "checkpoints" / "step-00000010")
    assert all(torch.isfinite(t).all() for name, t in tensors.items() if name.startswith("model."))


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = _files.os.fsync
    writes = []

    def fsync_until_full(descriptor: int) -> None:
        writes.append(descriptor)
        if len(writes) > 6:  # results.json, recipe.toml, two checkpoints of two files: then the disk is full
            raise OSError(28, "No space left on device")
        real_fsync(descriptor)

    monkeypatch.setattr(_files.os, "fsync", fsync_until_full)
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(RECIPES / "mnist.toml"),
            *SMALL,
            "train.checkpoint_every=3",
            f"output.dir={tmp_path / 'run'}",
            "--no-progress",
        ],
    )
    assert_user_error(result, "No space left on device")
    kept = RunFolder(tmp_path / "run").checkpoints
    assert [p.name for p in kept] == ["step-00000003", "step-00000006"]
    checkpoint.load(kept[-1])  # whole and readable
    leftovers = [p for p in (tmp_path / "run").rglob("*") if p.name.startswith(".")]
    assert not leftovers


def test_unwritable_output_folder_is_one_line(mnist_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    result = CliRunner().invoke(
        cli, ["run", str(RECIPES / "mnist.toml"), *SMALL, f"output.dir={tmp_path / 'a-file' / 'run'}"]
    )
    assert_user_error(result, "cannot create the run folder", "Not a directory")


def test_sigkill_then_resume_with_ema_mixing_balanced_sampling_and_augmentation_is_bit_identical(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """Every stateful option at once: the EMA's weights, MixUp/CutMix draws (numpy's RNG), the balanced
    sampler's order and the on-device augmentation's draws all continue exactly."""
    args = [
        str(RECIPES / "mnist.toml"), "data.classes=[0,1,2]", "data.per_class=[300,40,200]", "data.batch_size=16",
        "data.val_split=0.05", "train.epochs=2", "train.checkpoint_every=10", "train.ema=0.99",
        "data.mixup=0.2", "data.cutmix=1.0", "data.sampler=balanced", "loss.class_weights=balanced",
        "data.augment=default", "train.precision=fp32",
    ]  # fmt: skip
    kill_then_resume(tmp_path, args, "step-00000020")  # 34 steps an epoch


def test_sigkill_then_resume_over_image_folder_workers_with_augmentation_is_bit_identical(
    mnist_png: Path, tmp_path: Path
) -> None:
    """No decoded cache: two DataLoader workers (persistent) apply timm's random transforms, each
    sample seeded from (seed, epoch, position, rank), so the resumed run draws what the killed one would."""
    args = [
        str(RECIPES / "timm_finetune.toml"), "model.backbone=timm/test_resnet", "model.pretrained=false",
        "model.freeze.freeze=[]", f"data.root={mnist_png}", "data.classes=[0,1,2]", "data.image_size=32",
        "data.batch_size=8", "data.val_split=0.1", "train.epochs=2", "train.checkpoint_every=5",
        "train.precision=fp32", "data.cache=none", "data.num_workers=2", "data.augment=default", "data.degrees=10",
    ]  # fmt: skip
    kill_then_resume(tmp_path, args, "step-00000015")  # 21 steps an epoch: mid-epoch 1


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 5), st.integers(2, 6), st.integers(1, 5), st.integers(2, 6))
def test_a_ranks_part_is_used_only_by_that_rank_at_that_world_size(
    written_rank: int, written_world: int, rank: int, world: int
) -> None:
    """Its rank and world size ride in its file's header: any other rank or world size is refused in one line."""
    own = (
        {"rng.torch": torch.arange(4, dtype=torch.uint8), "loss_sum": torch.tensor(2.5)},
        {"rng": {"x": 1}, "seen": 3},
    )
    with (
        patch.object(distributed, "rank", lambda: written_rank),
        patch.object(distributed, "world_size", lambda: written_world),
    ):
        data = checkpoint._serialised(own)
    with patch.object(distributed, "world_size", lambda: world):
        if (written_rank, written_world) == (rank, world):
            tensors, state = checkpoint._part(Path("step-1"), rank, data)
            assert state == own[1] and tensors.keys() == own[0].keys()
            assert all(torch.equal(tensors[name], own[0][name]) for name in tensors)
        else:
            refused = f"the state of rank {written_rank} of {written_world} processes, not of rank {rank} of {world}"
            with pytest.raises(ZooError, match=refused):
                checkpoint._part(Path("step-1"), rank, data)


def test_a_ranks_part_without_its_header_or_with_a_damaged_state_is_refused() -> None:
    tensors = {"loss_sum": torch.tensor(1.0)}
    for metadata, damaged in [
        (None, "rank-00001.safetensors: 'rank'"),
        ({"rank": "1", "world_size": "2", "state": "{"}, "rank-00001.safetensors: Expecting"),
        ({"rank": "1", "world_size": "2", "state": '{"rng": {}, "seen": -1}'}, "rank-00001.safetensors: seen"),
    ]:
        with patch.object(distributed, "world_size", lambda: 2), pytest.raises(ZooError, match=damaged):
            checkpoint._part(Path("step-1"), 1, save_safetensors(tensors, metadata=metadata))


def test_a_checkpoint_of_another_world_size_or_with_another_runs_part_is_refused(tmp_path: Path) -> None:
    state = {"step": 1, "epoch": 1, "position": 1, "seen": 4, "world_size": 1, "applied_stages": [], "history": [],
             "optimizer": {}, "rng": {}}  # fmt: skip
    (tmp_path / checkpoint.STATE).write_text(json.dumps(state))
    (tmp_path / checkpoint.TENSORS).write_bytes(save_safetensors({"loss_sum": torch.tensor(1.0)}))
    assert checkpoint.load_own(tmp_path)[1] == state
    (tmp_path / "rank-00001.safetensors").write_bytes(save_safetensors({"loss_sum": torch.tensor(1.0)}))
    with pytest.raises(ZooError, match="holds rank-00001.safetensors, which no rank of 1 processes wrote"):
        checkpoint.load_own(tmp_path)
    (tmp_path / checkpoint.STATE).write_text(json.dumps(state | {"world_size": 2}))
    with pytest.raises(ZooError, match="was written by 2 processes; resume it with as many"):
        checkpoint.load_own(tmp_path)


def test_links_where_checkpoints_go_are_never_followed(tmp_path: Path) -> None:
    """checkpoints/ a link: refused in one line, nothing written where it points; a step-* link: never read as
    a checkpoint, deleted through, or written into: a new checkpoint of that step replaces the link."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    part = ({"loss_sum": torch.tensor(1.0)}, {"step": 1})
    linked = tmp_path / "linked" / "checkpoints"
    linked.parent.mkdir()
    linked.symlink_to(outside)
    with pytest.raises(ZooError, match="is not a folder of the run"):
        checkpoint.save(linked, 1, part, ({}, {}), keep=1)
    assert [p.name for p in outside.iterdir()] == ["keep.txt"]

    root = tmp_path / "run" / "checkpoints"
    root.mkdir(parents=True)
    (outside / "state.json").write_text("{}")  # would pass for a checkpoint if the link were followed
    (root / "step-00000001").symlink_to(outside)
    (root / "step-00000002").symlink_to(outside)
    assert checkpoint.all_checkpoints(root) == []
    checkpoint.save(root, 2, part, ({}, {}), keep=1)
    checkpoint.save(root, 3, part, ({}, {}), keep=1)
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt", "state.json"]
    assert [p.name for p in checkpoint.all_checkpoints(root)] == ["step-00000003"]
    assert (root / "step-00000001").is_symlink()  # not zoo's: left where it is


def test_a_save_removes_the_staging_folders_of_saves_a_kill_cut_short(tmp_path: Path) -> None:
    root = tmp_path / "run" / "checkpoints"
    part = ({"loss_sum": torch.tensor(1.0)}, {"step": 1})
    checkpoint.save(root, 1, part, ({}, {}), keep=2)
    cut_short = _files.staging_folder(root / "step-00000002")  # what kill -9 during a save leaves
    (cut_short / checkpoint.TENSORS).write_bytes(b"half a file")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (root / ".step-00000003.link").symlink_to(outside)  # not a folder zoo made: never followed nor removed
    checkpoint.save(root, 2, part, ({}, {}), keep=2)
    assert sorted(p.name for p in root.iterdir()) == [".step-00000003.link", "step-00000001", "step-00000002"]
    assert [p.name for p in outside.iterdir()] == ["keep.txt"]
    assert (root / "step-00000002" / checkpoint.TENSORS).read_bytes() != b"half a file"  # the new save, whole


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "adadelta"])
def test_optimiser_state_through_a_checkpoint_steps_on_as_if_never_saved(name: str) -> None:
    """Moments saved (contiguous, as safetensors holds them) and loaded beside channels-last
    parameters: the next steps equal those of the optimiser that was never saved. torch's fused CPU
    kernels read a parameter and its moments in memory order: moments loaded contiguous beside a
    channels-last weight moved it by the wrong values (0.15 after one step of Adam)."""
    from zoo.config.schema import OptimConfig
    from zoo.training.optim import build_optimizer

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 2))
        return net.to(memory_format=torch.channels_last)

    def steps(net: torch.nn.Module, optimizer: torch.optim.Optimizer, seeds: range) -> None:
        for seed in seeds:
            torch.manual_seed(seed)
            images = torch.randn(4, 3, 6, 6).contiguous(memory_format=torch.channels_last)
            net(images).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    config = OptimConfig(name=name, lr=0.05, **({"momentum": 0.9} if name == "sgd" else {}))
    kept, saved = model(), model()
    kept_optimizer = build_optimizer(config, [{"params": list(kept.parameters())}], torch.device("cpu"))
    saved_optimizer = build_optimizer(config, [{"params": list(saved.parameters())}], torch.device("cpu"))
    steps(kept, kept_optimizer, range(3))
    steps(saved, saved_optimizer, range(3))
    tensors, state = checkpoint.optimizer_state(saved_optimizer)
    tensors = {key: tensor.contiguous().clone() for key, tensor in tensors.items()}  # as safetensors gives them back
    loaded = model()
    loaded.load_state_dict(saved.state_dict())
    loaded_optimizer = build_optimizer(config, [{"params": list(loaded.parameters())}], torch.device("cpu"))
    checkpoint.load_optimizer_state(loaded_optimizer, tensors, json.loads(json.dumps(state)))
    steps(kept, kept_optimizer, range(3, 6))
    steps(loaded, loaded_optimizer, range(3, 6))
    assert loaded[0].weight.is_contiguous(memory_format=torch.channels_last)
    for before, after in zip(kept.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(before, after)


def test_a_foreach_checkpoint_goes_on_with_the_kernel_built_now() -> None:
    """A run checkpointed by a foreach AdamW (zoo before its CPU kernels were fused), resumed where
    AdamW is fused: every group steps fused, those a later stage adds too, and in fp16 the grad
    scaler's step works (it hands fused kernels its scale: a foreach group refused it, an
    AssertionError at the first step)."""
    from zoo.config.schema import OptimConfig
    from zoo.training.optim import build_optimizer

    trained, frozen = torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)
    trained(torch.ones(1, 3)).sum().backward()
    before = torch.optim.AdamW(trained.parameters(), lr=0.1, foreach=True)
    before.step()
    tensors, state = checkpoint.optimizer_state(before)
    resumed = build_optimizer(OptimConfig(name="adamw", lr=0.1), [{"params": list(trained.parameters())}],
                              torch.device("cpu"))  # fmt: skip
    checkpoint.load_optimizer_state(resumed, tensors, json.loads(json.dumps(state)))
    resumed.add_param_group({"params": list(frozen.parameters())})
    assert [(group["fused"], group["foreach"]) for group in resumed.param_groups] == [(True, None), (True, None)]
    assert resumed.state[trained.weight]["exp_avg"].equal(before.state[trained.weight]["exp_avg"])
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = (trained(torch.ones(1, 3)).sum() + frozen(torch.ones(1, 2)).sum()).float()
    scaler.scale(loss).backward()
    scaler.step(resumed)
    scaler.update()
    assert int(resumed.state[trained.weight]["step"]) == 2
