"""The `hf` dataset's training speed, once cached, against the same images in an image folder.

    ZOO_DATA_DIR=../shared/data python bench/hf_bench.py                   # about 4 minutes on 2 cores
    ZOO_DATA_DIR=../shared/data python bench/hf_bench.py --per-class 300 --epochs 4 --repeats 2

MNIST digits written out as PNG files, --per-class of each digit per split, twice: as an image
folder (ImageFolder layout) and in the Hub's format, one parquet file per split of the very same
PNG bytes under data/ (what a Hub dataset repo holds and ``datasets.load_dataset`` reads; a repo
served from the Hub is read into the same cache of ``datasets`` first). Each contender is
`zoo run recipes/timm_finetune.toml` with timm's resnet10t from scratch at 32 px, batch 64, 2
DataLoader workers, the default decoded cache (data.cache=disk) in an empty ZOO_CACHE_DIR, for
--epochs epochs, in its own subprocess, one after the other, --repeats times:

  image_folder  data.dataset=image_folder, data.root=the folder
  hf            data.dataset=hf, data.args.path=the parquet folder

Reported: the first epoch's seconds with the cache's building (and the dataset's load), and the
steady state: the median seconds of the later epochs, once cached; hf's as a ratio of image_folder's
(below 1: hf is faster).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCH, SIZE, BATCH, WORKERS = "resnet10t", 32, 64, 2


def write_data(per_class: int, where: Path) -> tuple[Path, Path]:
    """The image folder and the parquet folder of the same PNG files."""
    import datasets

    from zoo.config.recipe import default_data_dir
    from zoo.data.mnist import write_image_folder

    folder = write_image_folder(default_data_dir(), where / "folder", {"train": per_class, "test": per_class // 4})
    names = [str(digit) for digit in range(10)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    parquet = where / "parquet" / "data"
    parquet.mkdir(parents=True)
    for split in ("train", "test"):
        files = sorted((folder / split).rglob("*.png"))
        rows = {
            "image": [{"bytes": path.read_bytes(), "path": None} for path in files],
            "label": [names.index(path.parent.name) for path in files],
        }
        buffer = io.BytesIO()
        datasets.Dataset.from_dict(rows, features=features).to_parquet(buffer)
        (parquet / f"{split}-00000-of-00001.parquet").write_bytes(buffer.getvalue())
    return folder, parquet.parent


def zoo_run(data: list[str], epochs: int) -> dict:
    output = Path(tempfile.mkdtemp()) / "run"
    command = [
        str(Path(sys.executable).with_name("zoo")), "run", str(REPO / "recipes" / "timm_finetune.toml"), "--no-progress",
        f"model.backbone=timm/{ARCH}", "model.pretrained=false", "model.freeze.freeze=[]", f"data.image_size={SIZE}",
        f"data.batch_size={BATCH}", f"data.num_workers={WORKERS}", "data.val_split=0.0", "data.cache=disk",
        f"train.epochs={epochs}", "train.precision=fp32", f"output.dir={output}", *data,
    ]  # fmt: skip
    cache_dir = Path(tempfile.mkdtemp())  # empty: the first epoch pays for building the cache
    env = {**os.environ, "ZOO_CACHE_DIR": str(cache_dir), "HF_DATASETS_CACHE": str(cache_dir / "datasets")}
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    history = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    seconds = [record["seconds"] for record in history]
    built = re.search(r"decoded [\d,]+ images in ([\d.]+) s", result.stdout)
    accuracy = json.loads((output / "results.json").read_text())["test"]["accuracy"]
    return {
        "first": seconds[0] + (float(built.group(1)) if built else 0.0),
        "steady": statistics.median(seconds[1:]),
        "test_accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=100, help="training images of each digit (test: a quarter)")
    parser.add_argument("--epochs", type=int, default=3, help="at least 2: the first builds the cache")
    parser.add_argument("--repeats", type=int, default=1)
    options = parser.parse_args()
    if options.epochs < 2:
        parser.error("--epochs must be at least 2: the steady state is the epochs after the first")
    with tempfile.TemporaryDirectory() as where:
        folder, parquet = write_data(options.per_class, Path(where))
        contenders = {
            "image_folder": ["data.dataset=image_folder", f"data.root={folder}"],
            "hf": ["data.dataset=hf", f"data.args={{path = '{parquet}'}}"],
        }
        runs: dict[str, list[dict]] = {name: [] for name in contenders}
        for _ in range(options.repeats):
            for name, data in contenders.items():
                runs[name].append(zoo_run(data, options.epochs))
                print(f"{name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    best = {name: min(results, key=lambda result: result["steady"]) for name, results in runs.items()}
    print(f"date {date.today()}; {platform.machine()}, {os.cpu_count()} cores; {ARCH} at {SIZE} px, batch {BATCH}, "
          f"{WORKERS} workers, {options.per_class * 10:,} training images, {options.epochs} epochs, best of {options.repeats}")  # fmt: skip
    print("| dataset | first epoch (s, cache built) | steady epoch (s) | vs image_folder | test accuracy |")
    print("|---|---|---|---|---|")
    for name, result in best.items():
        ratio = result["steady"] / best["image_folder"]["steady"]
        print(f"| {name} | {result['first']:.1f} | {result['steady']:.2f} | {ratio:.2f}x | {result['test_accuracy']:.2%} |")  # fmt: skip


if __name__ == "__main__":
    main()
