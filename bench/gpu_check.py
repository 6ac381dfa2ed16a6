"""The CUDA path, checked on one GPU in under 8 minutes: prints a table, exits non-zero on any failure.

    ZOO_DATA_DIR=../shared/data python bench/gpu_check.py              # on a GPU machine
    ZOO_DATA_DIR=../shared/data python bench/gpu_check.py --dry-run    # anywhere: what it would measure

Checks: recipes/mnist.toml to 99% test accuracy (time, images/s), the same in bf16 and fp16,
train.compile=true, a timm backbone on an MNIST image folder at 224 px with 2 and with all
workers against the model alone on random CUDA tensors (the ceiling), peak memory of each, and
`zoo run --nproc 2` when two GPUs exist (its ranks must end with the same weights). In every
run, the training steps after the first epoch (the steady state) are watched: a host sync there
(torch.cuda.set_sync_debug_mode) or a graph compiled there (dynamo's count of unique graphs)
fails the check; the bar for both is zero. The dry run loads every recipe with its overrides,
so a renamed key fails it (the test suite runs it, and tests each check on the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from unittest import mock

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
# train.log_every above the run's length: its one deliberate sync every log_every steps is not counted.
MNIST_99 = ["train.epochs=3", "train.device=cuda", "train.log_every=100000"]
TIMM_224 = [
    "model.backbone=timm/resnet18", "model.pretrained=false", "model.freeze.freeze=[]", "data.image_size=224",
    "data.batch_size=128", "train.epochs=2", "train.device=cuda", "train.precision=bf16", "train.log_every=100000",
]  # fmt: skip


class HostSyncs:
    """Host syncs while watching: CUDA warns at each under ``torch.cuda.set_sync_debug_mode("warn")``."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        import torch

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:  # also when the steps end early (a generator closed at the consumer's `break`)
                torch.cuda.set_sync_debug_mode(0)
                self.count += sum("synchroniz" in str(warning.message) for warning in caught)


class Recompiles:
    """Graphs dynamo compiled while watching. (Its ``counters["recompiles"]`` stays empty in this
    torch, however many graphs compile; ``counters["stats"]["unique_graphs"]`` counts each one.)"""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        from torch._dynamo.utils import counters

        before = counters["stats"]["unique_graphs"]
        try:
            yield
        finally:
            self.count += counters["stats"]["unique_graphs"] - before


Watch = HostSyncs | Recompiles


def watched(batches: Iterable[T], watches: list[Watch]) -> Iterator[T]:
    """``batches``, each step under every watch: from fetching its batch to asking for the next."""
    iterator = iter(batches)
    while True:
        with contextlib.ExitStack() as stack:
            for watch in watches:
                stack.enter_context(watch.watching())
            try:
                batch = next(iterator)
            except StopIteration:
                return
            yield batch


@contextlib.contextmanager
def steady_training_steps(watches: list[Watch], from_epoch: int = 2) -> Iterator[None]:
    """Every zoo run inside watches its training steps from epoch ``from_epoch`` on (the first
    epoch warms up: compilation, cuDNN's benchmark, the allocator). Only the steps: the epoch
    ends and validation, which read results back by design, are not watched."""
    from zoo.data.batches import Batches

    original = Batches.epoch

    def epoch(self: Batches, epoch: int = 0, start: int = 0) -> Iterator:
        batches = original(self, epoch, start)
        return watched(batches, watches) if self.shuffle and epoch >= from_epoch else batches  # shuffled: training

    with mock.patch.object(Batches, "epoch", epoch):
        yield


def reaches(accuracy: float) -> Callable[[dict], str | None]:
    return lambda row: None if row["test_acc"] >= accuracy else f"test accuracy {row['test_acc']:.4f} < {accuracy}"


def no_host_syncs(row: dict) -> str | None:
    return None if row["host_syncs"] == 0 else f"{row['host_syncs']} host syncs in steady-state steps"


def no_recompiles(row: dict) -> str | None:
    return None if row["recompiles"] == 0 else f"{row['recompiles']} graphs compiled in steady-state steps"


def ranks_agree(results: dict) -> str | None:
    """A finished two-rank run whose ranks hold the same weights (results.json of `zoo run --nproc 2`)."""
    seen = {key: results.get(key) for key in ("state", "world_size", "ranks_agree")}
    return None if seen == {"state": "finished", "world_size": 2, "ranks_agree": True} else f"results.json: {seen}"


@dataclass
class Check:
    name: str
    recipe: Path
    overrides: list[str]
    what: str
    # Each gives a failure message, or None; every check also needs no host syncs and no recompiles.
    accept: list[Callable[[dict], str | None]] = field(default_factory=list)

    def verdict(self, row: dict) -> str | None:
        problems = [problem for accept in (*self.accept, no_host_syncs, no_recompiles) if (problem := accept(row))]
        return "; ".join(problems) or None


CHECKS = [
    Check(
        "mnist auto precision",
        RECIPES / "mnist.toml",
        [*MNIST_99, "train.precision=auto"],
        "99% test, img/s",
        [reaches(0.99)],
    ),  # fmt: skip
    Check(
        "mnist bf16", RECIPES / "mnist.toml", [*MNIST_99, "train.precision=bf16"], "99% test in bf16", [reaches(0.99)]
    ),
    Check(
        "mnist fp16",
        RECIPES / "mnist.toml",
        [*MNIST_99, "train.precision=fp16"],
        "99% test in fp16 + scaler",
        [reaches(0.99)],
    ),  # fmt: skip
    Check(
        "mnist compile",
        RECIPES / "mnist.toml",
        [*MNIST_99, "train.compile=true"],
        "compiled: 99% test",
        [reaches(0.99)],
    ),  # fmt: skip
    Check(
        "timm 224 px, 2 workers",
        RECIPES / "timm_finetune.toml",
        [*TIMM_224, "data.num_workers=2"],
        "image folder img/s",
    ),  # fmt: skip
    Check(
        "timm 224 px, all workers",
        RECIPES / "timm_finetune.toml",
        [*TIMM_224, f"data.num_workers={os.cpu_count()}"],
        "image folder img/s",
    ),  # fmt: skip
]


def dry_run(image_root: Path) -> int:
    from zoo.config import recipe as recipes

    print(f"{'check':<26}{'recipe':<22}measures")
    for check in CHECKS:
        recipes.load(check.recipe, [*check.overrides, f"data.root={image_root}"] if "timm" in check.name else check.overrides)  # fmt: skip
        print(f"{check.name:<26}{check.recipe.name:<22}{check.what}; steady state: host syncs, recompiles")
    print(f"{'model alone':<26}{'-':<22}timm resnet18 forward+backward on random CUDA tensors (the ceiling)")
    print(f"{'nproc 2':<26}{'mnist.toml':<22}zoo run --nproc 2 when two GPUs exist: ranks_agree")
    return 0


def measure(check: Check, image_root: Path) -> dict:
    import torch

    from zoo.config import recipe as recipes
    from zoo.training.runner import run

    folder = Path(tempfile.mkdtemp()) / "run"
    overrides = [*check.overrides, f"output.dir={folder}"] + (
        [f"data.root={image_root}"] if "timm" in check.name else []
    )
    torch.cuda.reset_peak_memory_stats()
    syncs, recompiles = HostSyncs(), Recompiles()
    with steady_training_steps([syncs, recompiles]):
        started = time.perf_counter()
        result = run(recipes.load(check.recipe, overrides), progress=False)
        seconds = time.perf_counter() - started
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {
        "seconds": seconds,
        "images_per_second": epochs[-1]["images_per_second"],
        "test_acc": result.results.test["accuracy"],
        "host_syncs": syncs.count,
        "recompiles": recompiles.count,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def two_ranks() -> str | None:
    """`zoo run --nproc 2` on mnist.toml for one epoch: a failure message, or None."""
    folder = Path(tempfile.mkdtemp()) / "run"
    zoo = str(Path(sys.executable).with_name("zoo"))
    command = [zoo, "run", "--nproc", "2", str(RECIPES / "mnist.toml"), "train.epochs=1", "train.device=cuda"]
    ddp = subprocess.run([*command, f"output.dir={folder}", "--no-progress"])
    if ddp.returncode != 0:
        return f"exit {ddp.returncode}"
    return ranks_agree(json.loads((folder / "results.json").read_text()))


def model_alone() -> float:
    """Images/s of timm's resnet18 alone at 224 px, bf16, batch 128: what the input pipeline should feed."""
    import timm
    import torch

    model = timm.create_model("resnet18", num_classes=10).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    images = torch.randn(128, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (128,), device="cuda")
    for step in range(60):
        if step == 10:
            torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return 50 * 128 / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="List the checks and load their recipes; run nothing.")
    args = parser.parse_args()
    image_root = Path(tempfile.mkdtemp()) / "mnist_png"
    if args.dry_run:
        return dry_run(image_root)
    import torch

    from zoo.config.recipe import default_data_dir
    from zoo.data.mnist import write_image_folder

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --dry-run to see what it measures", file=sys.stderr)
        return 2
    write_image_folder(default_data_dir(), image_root, {"train": 500, "test": 100})
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'check':<26}{'s':>8}{'img/s':>10}{'test acc':>10}{'syncs':>7}{'recompiles':>11}{'peak GiB':>9}  verdict")
    failures = 0
    for check in CHECKS:
        try:
            row = measure(check, image_root)
            problem = check.verdict(row)
        except Exception as exc:  # a check that crashes is a failed check; the others still run
            row, problem = {}, f"{type(exc).__name__}: {exc}"
        failures += problem is not None
        cells = [
            row.get(k) for k in ("seconds", "images_per_second", "test_acc", "host_syncs", "recompiles", "peak_gib")
        ]
        text = "".join(f"{c:>{w}.{p}f}" if c is not None else f"{'-':>{w}}" for c, w, p in zip(cells, (8, 10, 10, 7, 11, 9), (1, 0, 4, 0, 0, 2)))  # fmt: skip
        print(f"{check.name:<26}{text}  {problem or 'ok'}")
    print(f"{'model alone (ceiling)':<26}{'':>8}{model_alone():>10.0f}")
    if torch.cuda.device_count() >= 2:
        problem = two_ranks()
        failures += problem is not None
        print(f"{'nproc 2':<26}{problem or 'ok: the ranks agree'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
