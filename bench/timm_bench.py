"""The timm path's training speed: zoo on an image folder against timm's own training loop.

    ZOO_DATA_DIR=../shared/data python bench/timm_bench.py                 # about 5 minutes on 2 cores
    ZOO_DATA_DIR=../shared/data python bench/timm_bench.py --timm-train ../pytorch-image-models/train.py

Every contender trains timm's resnet10t from scratch at 32 px, batch 64, with 2 DataLoader
workers, on MNIST digits written out as PNG files (ImageFolder layout), with timm's default
training augmentation (random resized crop 0.08-1, flip 0.5, colour jitter 0.4), SGD with
momentum, label smoothing 0.1, fp32:

  timm-loop  timm's own parts as its train.py puts them together on a CPU without the
             prefetcher: timm.data.create_dataset + create_loader(is_training=True,
             use_prefetcher=False), create_model, create_optimizer_v2("sgd"), a plain step loop
  zoo        `zoo run recipes/timm_finetune.toml` with the same model, size, batch, workers,
             augmentation and optimiser
  train.py   timm's train.py itself, when --timm-train names it (a pytorch-image-models
             checkout; the package on PyPI does not ship it)

Each runs in its own subprocess, one after the other, `--repeats` times; throughput is training
images per second of training time (no evaluation), the best of the repeats, and the report
gives each as a ratio of timm-loop's measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCH, SIZE, BATCH, WORKERS, LR = "resnet10t", 32, 64, 2, 0.05


def timm_loop(folder: Path, epochs: int) -> dict:
    import timm
    import torch
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=10)
    config = resolve_data_config({"input_size": (3, SIZE, SIZE)}, model=model)
    dataset = create_dataset("", root=str(folder), split="train", is_training=True)
    loader = create_loader(
        dataset, input_size=config["input_size"], batch_size=BATCH, is_training=True, use_prefetcher=False,
        num_workers=WORKERS, mean=config["mean"], std=config["std"], interpolation=config["interpolation"],
        hflip=0.5, color_jitter=0.4, scale=(0.08, 1.0),
    )  # fmt: skip
    optimizer = create_optimizer_v2(model, "sgd", lr=LR, momentum=0.9, weight_decay=2e-5)
    loss_fn = LabelSmoothingCrossEntropy(0.1)
    rates = []
    for _ in range(epochs):
        model.train()
        seen, started = 0, time.perf_counter()
        for inputs, targets in loader:
            loss = loss_fn(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(targets)
        rates.append(seen / (time.perf_counter() - started))
    return {"images_per_second": rates}


def zoo_run(folder: Path, epochs: int) -> dict:
    output = Path(tempfile.mkdtemp()) / "run"
    command = [
        str(Path(sys.executable).with_name("zoo")), "run", str(REPO / "recipes" / "timm_finetune.toml"), "--no-progress",
        f"model.backbone=timm/{ARCH}", "model.pretrained=false", "model.freeze.freeze=[]", "model.head.dropout=0.0",
        f"data.root={folder}", f"data.image_size={SIZE}", f"data.batch_size={BATCH}", f"data.num_workers={WORKERS}",
        "data.val_split=0.0", "data.scale=[0.08, 1.0]", "data.hflip=0.5", "data.color_jitter=0.4",
        "optim.name=sgd", f"optim.lr={LR}", "optim.momentum=0.9", "optim.weight_decay=2e-5", "train.layer_decay=1.0",
        "schedule.name=none", f"train.epochs={epochs}", "train.precision=fp32", f"output.dir={output}",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    history = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {"images_per_second": [record["images_per_second"] for record in history]}


def timm_train_py(folder: Path, epochs: int, script: Path) -> dict:
    command = [
        sys.executable, str(script), str(folder), "--train-split", "train", "--val-split", "test", "--model", ARCH,
        "--num-classes", "10", "--input-size", "3", str(SIZE), str(SIZE), "-b", str(BATCH), "-j", str(WORKERS),
        "--epochs", str(epochs), "--device", "cpu", "--no-prefetcher", "--lr", str(LR), "--sched", "none",
        "--log-interval", "10", "--output", tempfile.mkdtemp(),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"train.py failed:\n{result.stderr[-3000:]}")
    # train.py logs each interval's rate as "... Time: 0.452s,  141.59/s ..."; the first interval warms up.
    rates = [float(rate) for rate in re.findall(r"Time:[^,]*,\s*([\d.]+)/s", result.stdout + result.stderr)]
    return {"images_per_second": [sum(rates[1:]) / max(1, len(rates) - 1)]}


def contender(name: str, folder: Path, epochs: int, script: Path | None) -> dict:
    """One contender in a subprocess of its own: its best epoch's images/s."""
    command = [sys.executable, __file__, "--contender", name, "--folder", str(folder), "--epochs", str(epochs)]
    if script:
        command += ["--timm-train", str(script)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--per-class", type=int, default=500, help="training PNGs per digit (default 500: 5,000 images)"
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timm-train", type=Path, help="timm's train.py, from a pytorch-image-models checkout")
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.contender:
        runners = {"timm-loop": lambda: timm_loop(args.folder, args.epochs), "zoo": lambda: zoo_run(args.folder, args.epochs),
                   "train.py": lambda: timm_train_py(args.folder, args.epochs, args.timm_train)}  # fmt: skip
        print(json.dumps(runners[args.contender]()))
        return

    from zoo.builtins.mnist import write_image_folder
    from zoo.recipe import default_data_dir

    folder = Path(tempfile.mkdtemp()) / "mnist_png"
    write_image_folder(default_data_dir(), folder, {"train": args.per_class, "test": 50})
    names = ["timm-loop", "zoo", *(["train.py"] if args.timm_train else [])]
    best: dict[str, float] = {}
    for repeat in range(args.repeats):
        for name in names:
            rates = contender(name, folder, args.epochs, args.timm_train)["images_per_second"]
            best[name] = max(best.get(name, 0.0), *rates)
            print(f"repeat {repeat + 1}: {name:<9} {max(rates):7.1f} img/s", flush=True)
    print(f"\n{date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{ARCH} at {SIZE} px, batch {BATCH}, {WORKERS} workers, {10 * args.per_class:,} PNGs, {args.epochs} epoch(s), "
          f"best of {args.repeats}")  # fmt: skip
    print(f"{'contender':<10} {'img/s':>8} {'vs timm-loop':>13}")
    for name in names:
        print(f"{name:<10} {best[name]:8.1f} {best[name] / best['timm-loop']:12.2f}x")


if __name__ == "__main__":
    main()
