"""The timm path's training speed: zoo on an image folder against timm's own training loop.

    ZOO_DATA_DIR=../shared/data python bench/timm_bench.py                 # about 8 minutes on 2 cores
    ZOO_DATA_DIR=../shared/data python bench/timm_bench.py --timm-train ../pytorch-image-models/train.py

Every contender trains timm's resnet10t from scratch at 32 px, batch 64, with 2 DataLoader
workers, on MNIST digits written out as PNG files (ImageFolder layout), with timm's default
training augmentation strength (random resized crop 0.08-1, flip 0.5, colour jitter 0.4), SGD
with momentum, label smoothing 0.1, fp32, the model and batches channels-last (zoo's default on a
CPU; timm's --channels-last), for --epochs epochs:

  timm-loop    timm's own parts as its train.py puts them together on a CPU without the
               prefetcher: timm.data.create_dataset + create_loader(is_training=True,
               use_prefetcher=False), create_model, create_optimizer_v2("sgd"), a plain step loop
  zoo-nocache  `zoo run recipes/timm_finetune.toml` with the same model, size, batch, workers,
               augmentation and optimiser, decoding the PNGs every epoch (data.cache=none)
  zoo          the same with zoo's default data.cache=disk: the PNGs decoded once, into a fresh
               cache whose building counts in the first epoch; batches cropped, flipped and
               jittered on the device
  model-alone  zoo's training step (the same model, torch's label-smoothing loss, SGD) on
               random tensors already in memory: the ceiling that no data path can pass
  train.py     timm's train.py itself, when --timm-train names it (a pytorch-image-models
               checkout; the package on PyPI does not ship it)

Each runs in its own subprocess, one after the other, `--repeats` times. Reported: the first
epoch's images/s (for zoo, cache building included), the steady state (the best later epoch),
each as a ratio of timm-loop's measured in the same invocation, the peak RSS of the largest
process, and the cache's size on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
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
    model = timm.create_model(ARCH, num_classes=10).to(memory_format=torch.channels_last)  # timm's --channels-last
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
            loss = loss_fn(model(inputs.contiguous(memory_format=torch.channels_last)), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(targets)
        rates.append(seen / (time.perf_counter() - started))
    return {"images_per_second": rates, "peak_rss_mb": _peak_rss_mb()}


def zoo_run(folder: Path, epochs: int, cache: str) -> dict:
    output = Path(tempfile.mkdtemp()) / "run"
    command = [
        str(Path(sys.executable).with_name("zoo")), "run", str(REPO / "recipes" / "timm_finetune.toml"), "--no-progress",
        f"model.backbone=timm/{ARCH}", "model.pretrained=false", "model.freeze.freeze=[]", "model.head.dropout=0.0",
        f"data.root={folder}", f"data.image_size={SIZE}", f"data.batch_size={BATCH}", f"data.num_workers={WORKERS}",
        "data.val_split=0.0", "data.scale=[0.08, 1.0]", "data.hflip=0.5", "data.color_jitter=0.4", f"data.cache={cache}",
        "optim.name=sgd", f"optim.lr={LR}", "optim.momentum=0.9", "optim.weight_decay=2e-5", "train.layer_decay=1.0",
        "schedule.name=none", "schedule.warmup_epochs=0", f"train.epochs={epochs}", "train.precision=fp32", f"output.dir={output}",
    ]  # fmt: skip
    cache_dir = Path(tempfile.mkdtemp())  # empty: the first epoch pays for building the cache
    env = {**os.environ, "ZOO_CACHE_DIR": str(cache_dir)}
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    history = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    rates = [record["images_per_second"] for record in history]
    built = re.search(r"decoded [\d,]+ images in ([\d.]+) s", result.stdout)
    if built:  # the first epoch's rate over its training time plus the cache's building
        images = rates[0] * history[0]["seconds"]
        rates[0] = images / (history[0]["seconds"] + float(built.group(1)))
    cache_bytes = sum(path.stat().st_size for path in cache_dir.rglob("*.u8"))
    accuracy = json.loads((output / "results.json").read_text())["test"]["accuracy"]
    return {"images_per_second": rates, "peak_rss_mb": _peak_rss_mb(), "cache_mb": cache_bytes / 2**20,
            "test_accuracy": accuracy}  # fmt: skip


def model_alone(epochs: int, images: int) -> dict:
    """zoo's step (torch's label-smoothing cross-entropy, fused SGD) on one batch of random
    tensors, over and over: what the step costs without any data path."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=10).to(memory_format=torch.channels_last)  # as zoo's on the CPU
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=2e-5, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    inputs = torch.randn(BATCH, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (BATCH,))
    rates = []
    for _ in range(epochs):
        model.train()
        started = time.perf_counter()
        for _ in range(images // BATCH):
            loss = loss_fn(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        rates.append(images // BATCH * BATCH / (time.perf_counter() - started))
    return {"images_per_second": rates, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """The peak resident memory of this process or any of its children (zoo, DataLoader workers), in MiB."""
    own, children = (resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return max(own, children) / 1024


def timm_train_py(folder: Path, epochs: int, script: Path) -> dict:
    command = [
        sys.executable, str(script), str(folder), "--train-split", "train", "--val-split", "test", "--model", ARCH,
        "--num-classes", "10", "--input-size", "3", str(SIZE), str(SIZE), "-b", str(BATCH), "-j", str(WORKERS),
        "--epochs", str(epochs), "--device", "cpu", "--no-prefetcher", "--lr", str(LR), "--sched", "none",
        "--log-interval", "10", "--output", tempfile.mkdtemp(), "--channels-last",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"train.py failed:\n{result.stderr[-3000:]}")
    # train.py logs each interval's rate as "... Time: 0.452s,  141.59/s ..."; the first interval warms up.
    rates = [float(rate) for rate in re.findall(r"Time:[^,]*,\s*([\d.]+)/s", result.stdout + result.stderr)]
    return {"images_per_second": [sum(rates[1:]) / max(1, len(rates) - 1)], "peak_rss_mb": _peak_rss_mb()}


def contender(name: str, folder: Path, epochs: int, script: Path | None) -> dict:
    """One contender in a subprocess of its own: its images/s epoch by epoch, peak RSS, cache size."""
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
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run: the first, then the steady state")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timm-train", type=Path, help="timm's train.py, from a pytorch-image-models checkout")
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.contender:
        runners = {
            "timm-loop": lambda: timm_loop(args.folder, args.epochs),
            "zoo-nocache": lambda: zoo_run(args.folder, args.epochs, "none"),
            "zoo": lambda: zoo_run(args.folder, args.epochs, "disk"),
            "model-alone": lambda: model_alone(args.epochs, 10 * args.per_class),
            "train.py": lambda: timm_train_py(args.folder, args.epochs, args.timm_train),
        }
        print(json.dumps(runners[args.contender]()))
        return

    from zoo.config.recipe import default_data_dir
    from zoo.data.mnist import write_image_folder

    folder = Path(tempfile.mkdtemp()) / "mnist_png"
    write_image_folder(default_data_dir(), folder, {"train": args.per_class, "test": 50})
    names = ["timm-loop", "zoo-nocache", "zoo", "model-alone", *(["train.py"] if args.timm_train else [])]
    first: dict[str, float] = {}
    steady: dict[str, float] = {}
    extra: dict[str, dict] = {}
    accuracies: dict[str, list[str]] = {}  # every repeat's, to show the spread
    for repeat in range(args.repeats):
        for name in names:
            measured = contender(name, folder, args.epochs, args.timm_train)
            rates = measured["images_per_second"]
            first[name] = max(first.get(name, 0.0), rates[0])
            steady[name] = max(steady.get(name, 0.0), *(rates[1:] or rates))
            extra[name] = {key: max(value, extra.get(name, {}).get(key, 0.0)) for key, value in measured.items()
                           if key not in ("images_per_second", "test_accuracy")}  # fmt: skip
            if "test_accuracy" in measured:
                accuracies.setdefault(name, []).append(f"{measured['test_accuracy']:.1%}")
            print(f"repeat {repeat + 1}: {name:<11} " + " ".join(f"{rate:7.1f}" for rate in rates) + " img/s by epoch",
                  flush=True)  # fmt: skip
    print(f"\n{date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{ARCH} at {SIZE} px, batch {BATCH}, {WORKERS} workers, {10 * args.per_class:,} PNGs, {args.epochs} epochs, "
          f"best of {args.repeats}")  # fmt: skip
    print(
        f"{'contender':<12} {'1st epoch':>10} {'vs timm':>8} {'steady':>8} {'vs timm':>8} {'peak RSS':>9} {'cache':>8}"
    )
    for name in names:
        cache = f"{extra[name]['cache_mb']:.1f} MB" if "cache_mb" in extra[name] else "-"
        print(f"{name:<12} {first[name]:10.1f} {first[name] / first['timm-loop']:7.2f}x {steady[name]:8.1f} "
              f"{steady[name] / steady['timm-loop']:7.2f}x {extra[name]['peak_rss_mb']:6.0f} MB {cache:>8}")  # fmt: skip
    print(f"zoo's steady state is {steady['zoo'] / steady['model-alone']:.0%} of the model alone on random tensors")
    print(f"test accuracy after {args.epochs} epochs (500 test PNGs): zoo {accuracies['zoo']}, "
          f"zoo-nocache {accuracies['zoo-nocache']}")  # fmt: skip


if __name__ == "__main__":
    main()
