"""Fine-tuned model quality: the targets of "the best model, not the last", measured in one run.

    ZOO_DATA_DIR=../shared/data python bench/finetune_targets.py     # about 10 minutes on 2 cores

Three experiments, each a handful of zoo runs of shipped recipes with overrides, every run
with the same seed and data on this machine:

  finetune    recipes/mnist_finetune.toml (digits 5-9, 50 images a class, on the digits-0-4
              backbone) against the same recipe from scratch (model.pretrained=false)
  png         MNIST digits 5-9 written as a PNG image folder (36 training images a class,
              300 test images a class), fine-tuned from the same backbone with default
              settings, against the best of several hand-chosen augmentations
  imbalance   the classic CNN from scratch on digits 0-9 with digit 9 20x rarer (200 images
              a class, 10 of the 9s): macro F1 without help, with loss.class_weights =
              balanced and with data.sampler = balanced, averaged over three seeds

Accuracy is on each split's whole test set; nothing here is a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
from pathlib import Path

from zoo.config import recipe as recipes
from zoo.config.recipe import default_data_dir
from zoo.data.mnist import write_image_folder
from zoo.training.runner import run

REPO = Path(__file__).resolve().parents[1]
FINETUNE = REPO / "recipes" / "mnist_finetune.toml"
MNIST = REPO / "recipes" / "mnist.toml"

HAND_CHOSEN = {
    "none": ["data.augment=none"],
    "crops 80%+ only": ["data.augment=light", "data.degrees=0", "data.translate=0", "data.scale=[0.8,1.0]"],
    "timm's crops 8%+, no flip": ["data.degrees=0", "data.translate=0", "data.scale=[0.08,1.0]"],
    "rotation 10, shift 0.08": ["data.degrees=10", "data.translate=0.08"],
    "rotation 20, shift 0.15": ["data.degrees=20", "data.translate=0.15"],
    "crops 70%+, rotation 15, shift 0.1": ["data.scale=[0.7,1.0]"],
}


def test_metrics(recipe: Path, overrides: list[str], work: Path) -> dict:
    loaded = recipes.load(recipe, [*overrides, f"output.dir={work / f'run{len(list(work.iterdir()))}'}"])
    with contextlib.redirect_stdout(io.StringIO()):  # each run's log; the table is what this prints
        return run(loaded, progress=False).results.test


def finetune(work: Path) -> list[tuple[str, str]]:
    pretrained = test_metrics(FINETUNE, [], work)["accuracy"]
    scratch = test_metrics(FINETUNE, ["model.pretrained=false"], work)["accuracy"]
    return [
        ("mnist_finetune (pretrained on digits 0-4)", f"{pretrained:.2%}"),
        ("same, from scratch", f"{scratch:.2%}"),
    ]


def png(work: Path) -> list[tuple[str, str]]:
    folder = write_image_folder(default_data_dir(), work / "digits", {"train": 40, "test": 300})
    base = ["data.dataset=image_folder", f"data.root={folder}", "data.per_class=36", "data.val_split=0.1",
            "data.num_workers=1"]  # fmt: skip
    default = test_metrics(FINETUNE, base, work)["accuracy"]
    rows = [("PNG folder, default settings", f"{default:.2%}")]
    chosen = {name: test_metrics(FINETUNE, [*base, *keys], work)["accuracy"] for name, keys in HAND_CHOSEN.items()}
    rows += [(f"PNG folder, {name}", f"{accuracy:.2%}") for name, accuracy in chosen.items()]
    best = max(chosen, key=chosen.__getitem__)
    rows.append(("default minus best hand-chosen", f"{100 * (default - chosen[best]):+.2f} points ({best})"))
    return rows


def imbalance(work: Path) -> list[tuple[str, str]]:
    base = ["data.per_class=[200,200,200,200,200,200,200,200,200,10]", "data.val_split=0.05", "train.epochs=8",
            "data.batch_size=64", "schedule.name=cosine", "data.augment=none"]  # fmt: skip
    variants = {"no help": [], "loss.class_weights = balanced": ["loss.class_weights=balanced"],
                "data.sampler = balanced": ["data.sampler=balanced"]}  # fmt: skip
    rows = []
    for name, keys in variants.items():
        runs = [test_metrics(MNIST, [*base, *keys, f"train.seed={seed}"], work) for seed in (0, 1, 2)]
        f1 = statistics.mean(metrics["f1"] for metrics in runs)
        rare = statistics.mean(metrics["per_class"][9]["recall"] for metrics in runs)
        rows.append((f"unbalanced digits, {name}", f"macro F1 {f1:.2%}, recall of the rare 9s {rare:.2%}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["finetune", "png", "imbalance"], help="run one experiment")
    args = parser.parse_args()
    experiments = {"finetune": finetune, "png": png, "imbalance": imbalance}
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["ZOO_CACHE_DIR"] = scratch  # the digits-0-4 backbone pretrained here, not taken from a cache
        for name, experiment in experiments.items():
            if args.only in (None, name):
                work = Path(scratch) / name
                work.mkdir()
                for label, figure in experiment(work):
                    print(f"{label:<48} {figure}", flush=True)


if __name__ == "__main__":
    main()
