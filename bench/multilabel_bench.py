"""Multi-label training: zoo against a plain timm + BCE loop, mAP and time side by side.

    python bench/multilabel_bench.py                   # about 3 minutes on 2 cores
    python bench/multilabel_bench.py --train 4000 --epochs 8

The data: grayscale 32 px canvases with up to four shapes each (bar, cross, disc, square: each
drawn with probability 0.4, at random places; tests/multilabel_data.py), listed in CSV files as
the `csv` dataset reads them. Both contenders train timm's resnet10t from scratch with one input
channel, 4 sigmoid outputs, binary cross-entropy with logits, AdamW at lr 3e-3 with a cosine
schedule, batch 64, fp32, the same epochs, no validation split, no augmentation (the plain loop has none):

  plain  the PNGs read into one tensor, then timm.create_model, torch's BCEWithLogitsLoss and a
         step loop over a shuffled tensor: the least a hand-written multi-label loop does
  zoo    `zoo run` of the equivalent recipe (task chosen by the data, loss bce by default)

Reported: the test mAP (macro over the four shapes) and the training time (zoo: results.json's
train_seconds, which leaves out start-up and the image cache; plain: its loop alone, reading the
PNGs left out), each as a ratio of plain's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
ARCH, SIZE, BATCH, LR = "resnet10t", 32, 64, 3e-3


def plain(root: Path, epochs: int) -> dict:
    import csv

    import numpy as np
    import timm
    import torch
    from PIL import Image

    from zoo.tasks.multi_label import average_precision

    torch.manual_seed(0)

    def rows_of(split: str) -> list[dict[str, str]]:
        return list(csv.DictReader((root / f"{split}.csv").read_text().splitlines()))

    names = sorted({label for row in rows_of("train") for label in row["labels"].split()})

    def read(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows = rows_of(split)
        images = np.stack([np.asarray(Image.open(root / row["image"]).convert("L")) for row in rows])
        labels = torch.tensor([[float(name in row["labels"].split()) for name in names] for row in rows])
        return (torch.from_numpy(images).float()[:, None] / 255 - 0.5) / 0.5, labels

    (train_x, train_y), (test_x, test_y) = read("train"), read("test")
    model = timm.create_model(ARCH, num_classes=len(names), in_chans=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    steps = epochs * (len(train_x) // BATCH)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_x))
        for start in range(0, len(order) - BATCH + 1, BATCH):
            chosen = order[start : start + BATCH]
            loss = loss_fn(model(train_x[chosen]), train_y[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(test_x[s : s + 256]).sigmoid() for s in range(0, len(test_x), 256)])
    aps = [average_precision(scores[:, c], test_y[:, c]) for c in range(len(names))]
    return {"mAP": sum(aps) / len(aps), "seconds": seconds}


def zoo(root: Path, epochs: int, work: Path) -> dict:
    recipe = work / "multilabel.toml"
    recipe.write_text(
        f"""name = "multilabel_bench"
[model]
backbone = "timm/{ARCH}"
pretrained = false
[model.args]
in_chans = 1
[data]
dataset = "csv"
root = "{root}"
val_split = 0.0
batch_size = {BATCH}
augment = "none"
image_size = {SIZE}
mean = [0.5]
std = [0.5]
crop_pct = 1.0
[optim]
name = "adamw"
lr = {LR}
[schedule]
name = "cosine"
[train]
epochs = {epochs}
precision = "fp32"
[output]
dir = "{work / "run"}"
"""
    )
    environment = {**os.environ, "ZOO_CACHE_DIR": str(work / "cache")}  # a fresh image cache, not the user's
    subprocess.run([sys.executable, "-m", "zoo", "run", str(recipe), "--no-progress"], check=True, cwd=work,
                   env=environment)  # fmt: skip
    results = json.loads((work / "run" / "results.json").read_text())
    return {"mAP": results["test"]["mAP"], "seconds": results["train_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    from multilabel_data import shapes_canvas

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        root = shapes_canvas(work / "canvas", train=args.train, test=args.test, size=SIZE)
        found = {"plain": plain(root, args.epochs), "zoo": zoo(root, args.epochs, work)}
    base = found["plain"]
    print(f"\n{args.train} training canvases, {args.test} test, {args.epochs} epochs, {ARCH} at {SIZE} px")
    print("| contender | test mAP | vs plain | training s | vs plain |\n|---|---|---|---|---|")
    for name, result in found.items():
        print(f"| {name} | {100 * result['mAP']:.2f}% | {result['mAP'] - base['mAP']:+.4f} | "
              f"{result['seconds']:.1f} | {result['seconds'] / base['seconds']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
