"""The CUDA path, checked on one GPU in under 8 minutes: prints a table, exits non-zero on any failure.

    ZOO_DATA_DIR=../shared/data python bench/gpu_check.py              # on a GPU machine
    ZOO_DATA_DIR=../shared/data python bench/gpu_check.py --dry-run    # anywhere: what it would measure

Checks: recipes/mnist.toml to 99% test accuracy (time, images/s, host syncs counted with
torch.cuda.set_sync_debug_mode("warn")), the same in bf16 and fp16, train.compile=true (its
recompiles counted by dynamo), a timm backbone on an MNIST image folder at 224 px with 2 and with
all workers against the model alone on random CUDA tensors (the ceiling), peak memory of each,
and `zoo run --nproc 2` when two GPUs exist. The dry run loads every recipe with its overrides,
so a renamed key fails it (the test suite runs it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
MNIST_99 = ["train.epochs=3", "train.device=cuda"]
TIMM_224 = [
    "model.backbone=timm/resnet18", "model.pretrained=false", "model.freeze.freeze=[]", "data.image_size=224",
    "data.batch_size=128", "train.epochs=1", "train.device=cuda", "train.precision=bf16",
]  # fmt: skip


@dataclass
class Check:
    name: str
    recipe: Path
    overrides: list[str]
    what: str
    accept: Callable[[dict], str | None] = field(default=lambda row: None)  # a failure message, or None


def reaches(accuracy: float) -> Callable[[dict], str | None]:
    return lambda row: None if row["test_acc"] >= accuracy else f"test accuracy {row['test_acc']:.4f} < {accuracy}"


def no_recompiles(row: dict) -> str | None:
    return None if row["recompiles"] == 0 else f"{row['recompiles']} recompiles in steady state"


CHECKS = [
    Check(
        "mnist auto precision",
        RECIPES / "mnist.toml",
        [*MNIST_99, "train.precision=auto"],
        "99% test, img/s, host syncs",
        reaches(0.99),
    ),  # fmt: skip
    Check("mnist bf16", RECIPES / "mnist.toml", [*MNIST_99, "train.precision=bf16"], "99% test in bf16", reaches(0.99)),
    Check(
        "mnist fp16",
        RECIPES / "mnist.toml",
        [*MNIST_99, "train.precision=fp16"],
        "99% test in fp16 + scaler",
        reaches(0.99),
    ),  # fmt: skip
    Check(
        "mnist compile",
        RECIPES / "mnist.toml",
        [*MNIST_99, "train.compile=true"],
        "compiled: recompiles",
        no_recompiles,
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
    from zoo import recipe as recipes

    print(f"{'check':<26}{'recipe':<22}measures")
    for check in CHECKS:
        recipes.load(check.recipe, [*check.overrides, f"data.root={image_root}"] if "timm" in check.name else check.overrides)  # fmt: skip
        print(f"{check.name:<26}{check.recipe.name:<22}{check.what}")
    print(f"{'model alone':<26}{'-':<22}timm resnet18 forward+backward on random CUDA tensors (the ceiling)")
    print(f"{'nproc 2':<26}{'mnist.toml':<22}zoo run --nproc 2 when two GPUs exist: ranks_agree")
    return 0


def measure(check: Check, image_root: Path) -> dict:
    import json

    import torch
    import torch._dynamo.utils as dynamo_utils

    from zoo import recipe as recipes
    from zoo.train import run

    folder = Path(tempfile.mkdtemp()) / "run"
    overrides = [*check.overrides, f"output.dir={folder}"] + (
        [f"data.root={image_root}"] if "timm" in check.name else []
    )
    torch.cuda.reset_peak_memory_stats()
    dynamo_utils.counters.clear()
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.perf_counter()
        result = run(recipes.load(check.recipe, overrides), progress=False)
        seconds = time.perf_counter() - started
    torch.cuda.set_sync_debug_mode(0)
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {
        "seconds": seconds,
        "images_per_second": epochs[-1]["images_per_second"],
        "test_acc": result.results.test["accuracy"],
        "host_syncs": sum("synchroniz" in str(w.message) for w in caught),
        "recompiles": sum(dynamo_utils.counters["recompiles"].values()),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


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

    from zoo.builtins.mnist import write_image_folder
    from zoo.recipe import default_data_dir

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
            problem = check.accept(row)
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
        zoo = str(Path(sys.executable).with_name("zoo"))
        ddp = subprocess.run(
            [zoo, "run", "--nproc", "2", str(RECIPES / "mnist.toml"), "train.epochs=1", "--no-progress"]
        )
        failures += ddp.returncode != 0
        print(f"{'nproc 2':<26}exit {ddp.returncode}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
