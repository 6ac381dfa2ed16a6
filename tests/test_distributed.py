"""Data-parallel runs: two CPU processes with gloo, launched through torchrun by `zoo run --nproc 2`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import (
    RECIPES,
    assert_job_ends,
    assert_user_error,
    kill_then_resume,
    tagged_processes,
    write_source_recipes,
)
from safetensors.torch import load_file, save_file

from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.models.build import build_model
from zoo.runs.folder import RunFolder
from zoo.training import checkpoint
from zoo.training.runner import run
from zoo.training.setup import seed_everything

pytestmark = pytest.mark.slow

SUBSET = ["data.classes=[0,1,2]", "data.per_class=200", "data.val_split=0.05", "train.epochs=2"]
# The last epoch's weights (train.keep = last): the stage's effect must show in the run folder.
FREEZING = [
    "model.freeze.freeze=['conv1.*']",
    "model.freeze.stages=[{epoch=2, unfreeze=['conv2.*'], lr_mult=0.5}]",
    "train.keep=last",
]
# Nothing drawn per rank (no dropout, no augmentation) and fp32: two ranks at batch B then step
# as one process at batch 2B (see test_both_ranks_end_identical_and_match_one_process). SGD, not
# Adam: its update is linear in the gradient, so that the order of summation cannot flip a tiny step.
EXACT = ["model.args.dropout1=0.0", "model.args.dropout2=0.0", "data.augment=none", "train.precision=fp32",
         "optim.name=sgd", "optim.lr=0.05"]  # fmt: skip


def zoo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("zoo")), *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """Two ranks of 32 images a batch each: a global batch of 64."""
    cwd = tmp_path_factory.mktemp("ddp")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("zoo")), "run", "--nproc", "2", str(RECIPES / "mnist.toml"), *SUBSET, *FREEZING, *EXACT, "data.batch_size=32", "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "batch 32 per rank x 2 ranks = 64 global" in result.stdout
    assert result.stdout.count("run folder:") == 2  # the start and the end, from rank 0 only
    folders = list((cwd / "runs").iterdir())
    assert len(folders) == 1, "only rank 0 writes a run folder"
    return folders[0]


def test_both_ranks_end_identical_and_match_one_process(ddp_run: Path, tmp_path: Path) -> None:
    """Each rank takes every other item of one shuffled order (its last batch filled from its own
    start), so two ranks' batches of 32 are together the one process's batch of 64, and DDP
    averages their gradients: the weights end equal up to the order of summation, through a
    frozen stage unfrozen at epoch 2."""
    results = json.loads((ddp_run / "results.json").read_text())
    assert (results["state"], results["world_size"], results["ranks_agree"]) == ("finished", 2, True)
    assert sum(row["support"] for row in results["test"]["per_class"]) == 980 + 1135 + 1032  # every test image, once

    overrides = [*SUBSET, *FREEZING, *EXACT, "data.batch_size=64", f"output.dir={tmp_path / 'one'}"]
    single = run(recipes.load(RECIPES / "mnist.toml", overrides), progress=False)
    assert results["steps"] == single.results.steps == 20  # 600 training images: 10 batches of 64 an epoch
    two, one = RunFolder(ddp_run).weights(), RunFolder(tmp_path / "one").weights()
    assert two.keys() == one.keys()
    for name in two:
        torch.testing.assert_close(
            two[name], one[name], rtol=1e-5, atol=1e-6, msg=lambda text, name=name: f"{name}: {text}"
        )
    assert abs(results["test"]["accuracy"] - single.results.test["accuracy"]) <= 1 / 3147  # one image at most


def test_frozen_and_staged_parameters_under_ddp(ddp_run: Path) -> None:
    recipe = recipes.from_dict(json.loads((ddp_run / "config.json").read_text())["zoo"]["recipe"])
    seed_everything(recipe.train.seed)
    initial = build_model(recipe.model, ["0", "1", "2"])[0].state_dict()
    trained = RunFolder(ddp_run).weights()
    assert torch.equal(initial["backbone.conv1.weight"], trained["backbone.conv1.weight"])
    assert not torch.equal(initial["backbone.conv2.weight"], trained["backbone.conv2.weight"])


def test_resume_under_the_same_world_size_only(ddp_run: Path) -> None:
    refused = CliRunner().invoke(
        cli,
        [
            "run",
            str(RECIPES / "mnist.toml"),
            *SUBSET,
            *FREEZING,
            *EXACT,
            "data.batch_size=32",
            "train.epochs=3",
            "--resume",
            str(ddp_run),
        ],
    )
    assert_user_error(refused, "was written by 2 processes; resume it with as many")
    resumed = zoo(
        "run",
        "--nproc",
        "2",
        str(RECIPES / "mnist.toml"),
        *SUBSET,
        *FREEZING,
        *EXACT,
        "data.batch_size=32",
        "train.epochs=3",
        "--resume",
        str(ddp_run),
        "--no-progress",
    )
    assert resumed.returncode == 0, resumed.stderr
    results = json.loads((ddp_run / "results.json").read_text())
    assert (results["epochs"], results["ranks_agree"]) == (3, True)


def test_the_command_line_shorthand_on_full_mnist(tmp_path: Path, mnist_dir: Path) -> None:
    result = zoo(
        "run",
        "--nproc",
        "2",
        str(RECIPES / "mnist.toml"),
        "train.max_steps=20",
        f"output.dir={tmp_path / 'run'}",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["steps"], results["world_size"]) == (20, 2)
    assert results["test"]["accuracy"] > 0.5


def test_a_mistake_under_nproc_is_one_line_once(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("zoo")), "run", "--nproc", "2", str(RECIPES / "mnist.toml"), "data.root=nowhere"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert_user_error(result, "MNIST not found in", "nowhere")
    assert "torch.distributed" not in result.stderr + result.stdout


def zoo_nproc(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("zoo")), "run", "--nproc", "2", *args, "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_dry_run_of_several_processes_shows_what_each_rank_would_train(
    mnist_dir: Path, tmp_path: Path, strategy: str
) -> None:
    """The batch each rank takes and the global one, and the memory format of the strategy (FSDP2
    shards contiguous parameters only): what a single process's dry run cannot show. Nothing is written."""
    folder = tmp_path / "run"
    result = zoo_nproc(tmp_path, str(RECIPES / "mnist.toml"), *SUBSET, "data.batch_size=16", f"train.strategy={strategy}",
                       "--dry-run", f"output.dir={folder}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    device = [line for line in result.stdout.splitlines() if line.startswith("device: ")]
    assert len(device) == 1  # rank 0 says it
    assert f"batch 16 per rank x 2 ranks = 32 global ({strategy})" in device[0]
    assert ("channels-last" in device[0]) is (strategy == "ddp")
    assert not folder.exists()


def test_a_batchnorm_backbone_finishes_with_ranks_in_agreement(mnist_png: Path, tmp_path: Path) -> None:
    """timm's test_resnet has BatchNorm: each rank's running statistics differ until rank 0's are shared."""
    folder = tmp_path / "bn"
    result = zoo_nproc(
        tmp_path, str(RECIPES / "timm_finetune.toml"), "model.backbone=timm/test_resnet", "model.pretrained=false",
        "model.freeze.freeze=[]", f"data.root={mnist_png}", "data.classes=[0,1,2]", "data.image_size=32",
        "data.hflip=0", "data.batch_size=8", "data.num_workers=0", "train.epochs=2", f"output.dir={folder}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads((folder / "results.json").read_text())
    assert (results["state"], results["world_size"], results["ranks_agree"]) == ("finished", 2, True)
    weights = RunFolder(folder).weights()
    assert any(name.endswith("running_mean") for name in weights)  # the statistics were saved, from rank 0
    assert sum(row["support"] for row in results["test"]["per_class"]) == 90  # 30 test images a class, each once
    # Both ranks read one decoded cache per split (train/ and test/), built once.
    assert len(list((Path(os.environ["ZOO_CACHE_DIR"]) / "images").glob("*.u8"))) == 2
    assert "image cache: disk" in result.stdout


def test_sync_bn_needs_gpus(mnist_dir: Path, tmp_path: Path) -> None:
    result = zoo_nproc(tmp_path, str(RECIPES / "mnist.toml"), *SUBSET, "train.sync_bn=true")
    assert_user_error(result, "train.sync_bn = true needs GPUs")


# On every rank of a run whose PYTHONPATH holds it: each all-reduce of the gradients, one line in
# $ZOO_TEST_ALLREDUCES.RANK (a DDP communication hook, called per bucket; the last bucket counts).
COUNTING_HOOK = """
    import os

    if "RANK" in os.environ:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel.__init__

        def counting_init(self, *args, **kwargs):
            wrapped(self, *args, **kwargs)
            log = f"{os.environ['ZOO_TEST_ALLREDUCES']}.{os.environ['RANK']}"

            def counting(state, bucket):
                if bucket.is_last():
                    with open(log, "a") as file:
                        file.write("all-reduce\\n")
                return allreduce_hook(state, bucket)

            self.register_comm_hook(None, counting)

        DistributedDataParallel.__init__ = counting_init
"""


def test_gradient_accumulation_under_ddp_equals_the_larger_batch(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accumulating two micro-batches of 8 per rank (DDP synchronising only the last) steps like batches of 16,
    with one all-reduce per optimiser step (counted by a communication hook).

    SGD, not Adam: its update is linear in the gradient, so summation order cannot flip a tiny step.
    """
    import textwrap

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(COUNTING_HOOK))
    monkeypatch.setenv("PYTHONPATH", f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    same = [
        *SUBSET,
        "train.epochs=1",
        "train.max_steps=6",
        "train.precision=fp32",
        "model.args.dropout1=0.0",
        "model.args.dropout2=0.0",
        "data.val_split=0.0",
        "data.augment=none",  # augmentation draws per batch: batches of 8 and of 16 would differ
        "optim.name=sgd",
        "optim.lr=0.05",
    ]  # fmt: skip
    monkeypatch.setenv("ZOO_TEST_ALLREDUCES", str(tmp_path / "accum-allreduces"))
    accumulated = zoo_nproc(tmp_path, str(RECIPES / "mnist.toml"), *same, "data.batch_size=8", "train.grad_accum=2", f"output.dir={tmp_path / 'accum'}")  # fmt: skip
    monkeypatch.setenv("ZOO_TEST_ALLREDUCES", str(tmp_path / "whole-allreduces"))
    whole = zoo_nproc(tmp_path, str(RECIPES / "mnist.toml"), *same, "data.batch_size=16", f"output.dir={tmp_path / 'whole'}")  # fmt: skip
    assert accumulated.returncode == 0 and whole.returncode == 0, accumulated.stderr + whole.stderr
    first, second = RunFolder(tmp_path / "accum").weights(), RunFolder(tmp_path / "whole").weights()
    for name in first:  # summation order differs by ~1e-6 over 6 steps; a wrong accumulation moves weights ~1e-3
        torch.testing.assert_close(first[name], second[name], rtol=1e-4, atol=1e-5)
    moved = RunFolder(tmp_path / "accum").weights()["head.0.weight"]
    assert json.loads((tmp_path / "accum" / "results.json").read_text())["steps"] == 6 and moved.abs().sum() > 0
    for name in ("accum", "whole"):  # 6 steps each: 6 all-reduces (without no_sync, 12 micro-batches make 12)
        counts = [len((tmp_path / f"{name}-allreduces.{rank}").read_text().splitlines()) for rank in (0, 1)]
        assert counts == [6, 6], (name, counts)


def test_sigkill_then_resume_under_two_processes_is_bit_identical(mnist_dir: Path, tmp_path: Path) -> None:
    """Every rank's RNG (dropout) and partial sums are checkpointed, so the resumed run repeats each rank."""
    settings = [*SUBSET, "data.per_class=600", "data.batch_size=16", "train.checkpoint_every=7", "train.precision=fp32"]
    kill_then_resume(tmp_path, [str(RECIPES / "mnist.toml"), *settings], "step-00000014", nproc=2)  # 54 steps an epoch


def test_a_rank_killed_alone_stops_the_job_in_one_line_and_the_run_resumes(mnist_dir: Path, tmp_path: Path) -> None:
    """The other rank stops quietly (no gloo traceback); the launcher names the rank and how it ended."""
    import signal
    import time

    folder = tmp_path / "run"
    job = ["run", "--nproc", "2", str(RECIPES / "mnist.toml"), *SUBSET, "data.batch_size=8", "train.max_steps=30",
           "train.checkpoint_every=10", f"output.dir={folder}", "--no-progress"]  # fmt: skip
    command = [str(Path(sys.executable).with_name("zoo")), *job]
    env = {**os.environ, "ZOO_TEST_JOB": str(folder)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not list((folder / "checkpoints").glob("step-*")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    ranks = [pid for pid in tagged_processes(f"ZOO_TEST_JOB={folder}") if pid != process.pid]
    second = [pid for pid in ranks if b"RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")]
    os.kill(second[0], signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGKILL, stdout + stderr
    assert stderr.strip().splitlines() == [
        "zoo: error: rank 1 was killed (SIGKILL) and the job stopped with it; continue it with --resume and --nproc 2"
    ]
    assert_job_ends(f"ZOO_TEST_JOB={folder}")
    resumed = zoo(*job, "--resume", str(folder))
    assert resumed.returncode == 0, resumed.stderr
    results = json.loads((folder / "results.json").read_text())
    assert (results["state"], results["steps"], results["ranks_agree"]) == ("finished", 30, True)


def test_fsdp_shards_what_ddp_replicates_and_trains_the_same(mnist_dir: Path, tmp_path: Path) -> None:
    """Frozen parameters, a stage unfrozen mid-run, gradient accumulation: FSDP steps like DDP, holding half."""
    # Both contiguous (FSDP's memory format): channels-last, DDP's on the CPU, sums in another order.
    same = [str(RECIPES / "mnist.toml"), *SUBSET, *FREEZING, "data.batch_size=16", "train.grad_accum=2",
            "train.precision=fp32", "train.checkpoint_every=7", "train.channels_last=false"]  # fmt: skip
    sharded = zoo_nproc(tmp_path, *same, "train.strategy=fsdp", f"output.dir={tmp_path / 'fsdp'}")
    replicated = zoo_nproc(tmp_path, *same, f"output.dir={tmp_path / 'ddp'}")
    assert sharded.returncode == 0 and replicated.returncode == 0, sharded.stderr + replicated.stderr
    assert "= 32 global (fsdp)" in sharded.stdout
    first, second = RunFolder(tmp_path / "fsdp").weights(), RunFolder(tmp_path / "ddp").weights()
    assert first.keys() == second.keys()
    for name in first:  # whole tensors in the run folder, equal up to the order of summation
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6)
    results = json.loads((tmp_path / "fsdp" / "results.json").read_text())
    assert (results["state"], results["ranks_agree"]) == ("finished", True)
    assert sum(row["support"] for row in results["test"]["per_class"]) == 980 + 1135 + 1032

    # A checkpoint holds each rank's own shards in its own file: together they make the whole tensor,
    # neither alone; and each file holds one rank's part (RNG state, Adam's moments) and no other's.
    newest = RunFolder(tmp_path / "fsdp").checkpoints[-1]
    assert sorted(path.name for path in newest.iterdir()) == [
        "rank-00001.safetensors",
        "state.json",
        "state.safetensors",
    ]
    parts = [checkpoint.load(newest)[0], load_file(newest / "rank-00001.safetensors")]
    assert parts[0].keys() == parts[1].keys() and not torch.equal(parts[0]["rng.torch"], parts[1]["rng.torch"])
    for name, whole in first.items():
        shards = [part[f"model.{name}"] for part in parts]
        assert all(len(shard) < len(whole) for shard in shards), name
        assert torch.equal(torch.cat(shards), whole), name
    trained = sum(whole.numel() for name, whole in first.items() if not name.startswith("backbone.conv1."))
    moments = [sum(t.numel() for name, t in part.items() if name.endswith(".exp_avg")) for part in parts]
    assert sum(moments) == trained and 0 < moments[1] < trained  # AdamW's moments split, not copied


def test_fsdp_on_a_batchnorm_backbone_resumes_bit_identical_after_sigkill(mnist_png: Path, tmp_path: Path) -> None:
    """timm's test_resnet, sharded: BatchNorm buffers stay whole, weights and Adam state are sharded."""
    args = [
        str(RECIPES / "timm_finetune.toml"), "model.backbone=timm/test_resnet", "model.pretrained=false",
        "model.freeze.freeze=[]", f"data.root={mnist_png}", "data.classes=[0,1,2]", "data.image_size=32",
        "data.hflip=0", "data.batch_size=8", "data.num_workers=0", "data.val_split=0.1", "train.epochs=2",
        "train.checkpoint_every=5", "train.precision=fp32", "train.strategy=fsdp",
    ]  # fmt: skip
    kill_then_resume(tmp_path, args, "step-00000005", nproc=2)  # 11 steps an epoch
    results = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert sum(row["support"] for row in results["test"]["per_class"]) == 90  # 45 on one rank, 45 on the other
    assert any(name.endswith("running_mean") for name in RunFolder(tmp_path / "killed").weights())


# Imported by every Python process of a run (sitecustomize, through PYTHONPATH): each call of an
# object collective notes whether what it carries holds a tensor.
SPY = """
import io
import os
import pickle

import torch
import torch.distributed as dist


def tensors_in(value):
    found = []

    class Spy(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, torch.Tensor):
                found.append(type(obj).__name__)
            return NotImplemented

    Spy(io.BytesIO()).dump(value)
    return found


# What each collective carries: (index in args, keyword), read after the call (what a rank sent or received).
CARRIED = {"broadcast_object_list": (0, "object_list"), "gather_object": (0, "obj"),
           "scatter_object_list": (1, "scatter_object_input_list"), "all_gather_object": (0, "object_list")}


def spied(name, collective, index, keyword):
    def call(*args, **kwargs):
        result = collective(*args, **kwargs)
        carried = args[index] if len(args) > index else kwargs.get(keyword)
        with open(os.environ["ZOO_TEST_COLLECTIVES"], "a") as log:
            log.write(f"{name} {len(tensors_in(carried))}\\n")
        return result

    return call


for name, (index, keyword) in CARRIED.items():
    setattr(dist, name, spied(name, getattr(dist, name), index, keyword))
"""


def test_fsdp_checkpoints_travel_in_no_object_collective_and_a_missing_rank_is_refused(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """Save, resume and keep the best epoch under FSDP: the object collectives carry decisions and
    bytes, never a tensor. A checkpoint without rank 1's file is then refused before any step."""
    (tmp_path / "spy").mkdir()
    (tmp_path / "spy" / "sitecustomize.py").write_text(SPY)
    log = tmp_path / "collectives.txt"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'spy'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "ZOO_TEST_COLLECTIVES": str(log)}  # fmt: skip
    folder = tmp_path / "run"
    args = [str(RECIPES / "mnist.toml"), *SUBSET, "data.batch_size=16", "train.strategy=fsdp",
            "train.checkpoint_every=7", f"output.dir={folder}"]  # fmt: skip
    first = zoo_nproc(tmp_path, *args, "train.epochs=1", env=env)
    assert first.returncode == 0, first.stderr
    resumed = zoo_nproc(tmp_path, *args, "train.epochs=3", "--resume", str(folder), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "keeping the best epoch's weights" in resumed.stdout
    calls = [line.split() for line in log.read_text().splitlines()]
    assert {name for name, _ in calls} >= {"broadcast_object_list", "all_gather_object"}  # the spy saw them
    assert [call for call in calls if call[1] != "0"] == []
    assert not list(folder.rglob(".*"))  # no staging folder or temporary file left

    newest = RunFolder(folder).checkpoints[-1]
    (newest / "rank-00001.safetensors").unlink()
    refused = zoo_nproc(tmp_path, *args, "train.epochs=4", "--resume", str(folder))
    assert_user_error(refused, f"checkpoint {newest} lacks rank 1's state (rank-00001.safetensors)")


def test_a_ddp_checkpoint_without_one_ranks_state_is_refused(ddp_run: Path, tmp_path: Path) -> None:
    """Rank 1's RNG state and partial sums missing, or written for another world size: one line
    before any step, never rank 0's state used in their place."""
    folder = tmp_path / "run"
    shutil.copytree(ddp_run, folder)
    newest = RunFolder(folder).checkpoints[-1]
    part = newest / "rank-00001.safetensors"
    tensors = load_file(part)
    assert {"rng.torch", "loss_sum", "correct"} <= tensors.keys() and not any(n.startswith("model.") for n in tensors)
    args = [str(RECIPES / "mnist.toml"), *SUBSET, *FREEZING, *EXACT, "data.batch_size=32", "train.epochs=4",
            "--resume", str(folder)]  # fmt: skip
    save_file(tensors, part, metadata={"rank": "1", "world_size": "4", "state": json.dumps({"rng": {}, "seen": 0})})
    refused = zoo_nproc(tmp_path, *args)
    assert_user_error(refused, f"checkpoint {newest} holds in rank-00001.safetensors the state of rank 1 of 4")
    part.unlink()
    refused = zoo_nproc(tmp_path, *args)
    assert_user_error(refused, f"checkpoint {newest} lacks rank 1's state (rank-00001.safetensors)")


def test_two_nodes_without_a_shared_folder_build_a_recipe_source_once(mnist_dir: Path, tmp_path: Path) -> None:
    """Two torchrun "nodes" on this machine, each with its own working folder and zoo cache."""
    write_source_recipes(tmp_path, "pre", "fine", per_class=20, val_split=0.05)
    port = free_port()
    nodes = []
    for node in (0, 1):
        work = tmp_path / f"node{node}"
        work.mkdir()
        command = [
            str(Path(sys.executable).with_name("torchrun")), "--nnodes", "2", "--node_rank", str(node),
            "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "zoo", "run", str(tmp_path / "fine.toml"), "--no-progress",
        ]  # fmt: skip
        env = {**os.environ, "ZOO_CACHE_DIR": str(work / "cache")}
        nodes.append(subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert outputs[0][0].count("running pre.toml first") == 1 and "running" not in outputs[1][0]
    runs = list((tmp_path / "node0" / "runs").iterdir())
    assert len(runs) == 1 and not (tmp_path / "node1" / "runs").exists()  # rank 0 alone writes the run
    results = json.loads((runs[0] / "results.json").read_text())
    assert (results["state"], results["world_size"], results["ranks_agree"]) == ("finished", 2, True)
    built, sent = (next((tmp_path / f"node{n}" / "cache" / "runs").glob("pre-*")) for n in (0, 1))
    assert (built / "model.safetensors").read_bytes() == (sent / "model.safetensors").read_bytes()


def test_fsdp_on_two_nodes_without_a_shared_folder_stops_at_the_first_checkpoint(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """Each rank writes its own shards into the run folder: a node that does not see it stops the run in
    one line, and no half checkpoint is left."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("torchrun")), "--nnodes", "2", "--nproc_per_node", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "zoo", "run",
               str(RECIPES / "mnist.toml"), *SUBSET, "train.strategy=fsdp", "train.checkpoint_every=3",
               "--no-progress"]  # fmt: skip
    nodes = []
    for node in (0, 1):
        (tmp_path / f"node{node}").mkdir()
        nodes.append(subprocess.Popen([*command[:3], "--node_rank", str(node), *command[3:]], cwd=tmp_path / f"node{node}",
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert all(node.returncode != 0 for node in nodes), outputs
    assert (
        "does not see the run's checkpoints/" in outputs[0][1] and "on a filesystem every node shares" in outputs[0][1]
    )
    [folder] = list((tmp_path / "node0" / "runs").iterdir())
    results = json.loads((folder / "results.json").read_text())
    assert results["state"] == "failed" and "does not see the run's checkpoints/" in results["reason"]
    assert [path.name for path in (folder / "checkpoints").iterdir()] == []  # the staging folder is gone


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SLOW_MODULE = {
    "slow_plugin.py": """
    import os
    import time
    from pathlib import Path

    from torch import nn

    class Slow(nn.Module):
        # A linear backbone whose forward takes a second in one phase (ZOO_TEST_SLOW: train or
        # eval), where it first touches the file ZOO_TEST_MARK. The setup's check of one batch, in
        # eval mode before the run folder is written, is not the phase.
        num_features = 8

        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 8))
            self.checked = False

        def forward(self, x):
            if not self.checked:
                self.checked = True
            elif ("train" if self.training else "eval") == os.environ["ZOO_TEST_SLOW"]:
                Path(os.environ["ZOO_TEST_MARK"]).touch()
                time.sleep(1.0)
            return self.layers(x)

    def slow():
        return Slow()
    """
}


@pytest.mark.parametrize("phase", ["train", "eval"])
def test_ctrl_c_under_two_processes_stops_within_seconds_even_in_slow_steps(
    phase: str, mnist_dir: Path, tmp_path: Path
) -> None:
    """Ctrl-C reaches torchrun, which passes SIGINT to both ranks and kills them 30 s later; they
    agree on a batch within seconds, in a training step or in validation, however slow its batches
    (1 s each here, 38 of them in either phase per rank, train.log_every far away)."""
    import signal
    import time

    from conftest import make_distribution

    site = make_distribution(tmp_path / "site", "slow", {"zoo.models": {"slow": "slow_plugin:slow"}}, SLOW_MODULE)
    mark = tmp_path / "slow-phase-started"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "ZOO_TEST_SLOW": phase, "ZOO_TEST_MARK": str(mark)}  # fmt: skip
    folder = tmp_path / "run"
    command = [
        str(Path(sys.executable).with_name("zoo")), "run", "--nproc", "2", str(RECIPES / "mnist.toml"),
        "model.backbone=slow", "data.classes=[0,1]", "data.per_class=300", "data.val_split=0.5", "data.batch_size=4",
        "data.eval_batch_size=4", "train.epochs=1", "train.log_every=1000", f"output.dir={folder}", "--no-progress",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env
    )
    deadline = time.monotonic() + 300
    while not mark.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(1.5)  # well inside the phase
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to the foreground process group
    interrupted = time.monotonic()
    # The ranks' promise: the run folder saved as interrupted within seconds (torchrun kills at 30 s).
    while json.loads((folder / "results.json").read_text())["state"] == "running":
        assert time.monotonic() - interrupted < 10, "the ranks did not stop within 10 s of Ctrl-C"
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout + stderr
    results = json.loads((folder / "results.json").read_text())
    assert results["state"] == "interrupted" and "Ctrl-C" in results["reason"], results
    assert results["world_size"] == 2 and results["ranks_agree"] is True
    assert (folder / "model.safetensors").is_file() and "Traceback" not in stderr


COUNTED_MODULE = {
    "counted_plugin.py": """
    import os
    from zoo.data.image_folder import ImageFolder

    def counted(root, split):
        '''An image folder that notes each time it is built (its folder scanned).'''
        with open(os.environ["ZOO_TEST_SCANS"], "a") as log:
            log.write(f"{os.getpid()} {split}\\n")
        return ImageFolder(root, split)
    """
}


def test_a_dataset_is_built_once_per_node_and_sent_to_its_other_ranks(mnist_png: Path, tmp_path: Path) -> None:
    from conftest import make_distribution

    site = make_distribution(tmp_path / "site", "counted", {"zoo.datasets": {"counted": "counted_plugin:counted"}},
                             COUNTED_MODULE)  # fmt: skip
    scans = tmp_path / "scans.txt"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "ZOO_TEST_SCANS": str(scans)}  # fmt: skip
    command = [
        str(Path(sys.executable).with_name("zoo")), "run", "--nproc", "2", str(RECIPES / "mnist_finetune.toml"),
        "data.dataset=counted", f"data.root={mnist_png}", "model.pretrained=false", "data.classes=[0,1]",
        "data.per_class=40", "train.epochs=1", f"output.dir={tmp_path / 'run'}", "--no-progress",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    built = scans.read_text().split("\n")[:-1]
    assert (
        sorted(line.split()[1] for line in built) == ["test", "train"] and len({line.split()[0] for line in built}) == 1
    )
