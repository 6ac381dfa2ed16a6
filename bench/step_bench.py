"""What zoo adds to a training step, measured against hand-written loops in the same process.

    ZOO_DATA_DIR=../shared/data python bench/step_bench.py             # every setting, 3-4 minutes on 2 cores
    ZOO_DATA_DIR=../shared/data python bench/step_bench.py --rounds 3  # a quicker, noisier look
    ZOO_DATA_DIR=../shared/data python bench/step_bench.py --write     # and into bench/RESULTS.md

Each setting trains two contenders on MNIST in one interpreter, in alternating chunks of
``--chunk`` optimiser steps (their order swapped every round), and reports the median images/s of
each over ``--rounds`` rounds and the median of the per-round ratios: a machine shared with other
work slows both sides of a round alike, which a run-after-run comparison cannot promise.

  zoo     zoo's own ``Trainer`` (zoo/training/loop.py) on recipes/mnist.toml with the setting's overrides,
          its epochs cut into chunks by ``max_steps``: the step `zoo run` takes, with its bookkeeping
  hand    the same model, recipe and in-memory uint8 tensors in the best plain loop (one parameter group,
          foreach optimiser, zoo's own lr schedule function; nothing else of zoo's)
  classic the classic PyTorch example's loop at its own settings: torchvision MNIST with per-item
          ToTensor + Normalize, DataLoader(batch 64, shuffle), Adadelta(lr 1.0), StepLR(gamma 0.7), fp32;
          zoo runs the same settings (``CLASSIC`` below)

Also measured, each in a fresh process, best of three: a one-step run of recipes/mnist.toml against
``python -c "import torch"`` plus the run's own test pass (the test time it reports).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "mnist.toml"
SECTION = "## What zoo adds to a step, and to start-up"  # this bench's section of bench/RESULTS.md
# The classic example's settings as recipe overrides: zoo at the user's settings, not at its own.
CLASSIC = [
    "data.batch_size=64",
    "train.precision=fp32",
    "optim.name=adadelta",
    "optim.lr=1.0",
    "optim.weight_decay=0.0",
    "schedule.name=step",
    "schedule.gamma=0.7",
    "loss.args={}",
]


class ZooSteps:
    """zoo's Trainer, advanced ``steps`` optimiser steps at a time."""

    def __init__(self, overrides: list[str]) -> None:
        from zoo.config.recipe import load
        from zoo.runs.folder import RunFolder
        from zoo.training.loop import Trainer
        from zoo.training.setup import build_run, seed_everything

        folder = Path(tempfile.mkdtemp()) / "run"
        self.recipe = load(RECIPE, [*overrides, f"output.dir={folder}", "train.epochs=1000"])
        setup = build_run(self.recipe, progress=False)
        seed_everything(self.recipe.train.seed)
        self.trainer = Trainer(setup, RunFolder(folder))

    def run(self, steps: int) -> int:
        """Train ``steps`` more steps (an epoch ends early there); the images trained."""
        trainer = self.trainer
        trainer.total_steps = trainer.step + steps
        record = trainer.train_epoch(progress=False)
        return round(record["images_per_second"] * record["seconds"])


class HandSteps:
    """The same recipe as ``ZooSteps`` written by hand: in-memory tensors, batch-level normalisation."""

    def __init__(self, overrides: list[str]) -> None:
        import zoo
        from zoo.config.recipe import default_data_dir, load

        self.recipe = recipe = load(RECIPE, overrides)
        torch.manual_seed(0)
        self.train = zoo.create_dataset("mnist", default_data_dir(), "train")
        backbone = zoo.create_model("mnist_cnn")
        self.model = nn.Sequential(backbone, nn.Linear(backbone.num_features, 10))
        name = recipe.optim.name
        optimizer = {"adamw": torch.optim.AdamW, "adadelta": torch.optim.Adadelta}[name]
        self.optimizer = optimizer(
            self.model.parameters(), lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay, foreach=True
        )
        self.batch = recipe.data.batch_size
        self.per_epoch = math.ceil(len(self.train) / self.batch)
        self.smoothing = recipe.loss.args.get("label_smoothing", 0.0)
        self.bf16 = recipe.train.precision in ("bf16", "auto") and _native_bf16()
        self.scale, self.shift = 1 / (255 * 0.3081), 0.1307 / 0.3081
        self.order = torch.randperm(len(self.train))
        self.step = 0

    def run(self, steps: int) -> int:
        from zoo.training.optim import lr_factor

        self.model.train()
        for _ in range(steps):
            start = (self.step * self.batch) % (len(self.train) - self.batch)
            index = self.order[start : start + self.batch]
            inputs = self.train.images[index].float().mul_(self.scale).sub_(self.shift)
            factor = lr_factor(self.recipe.schedule, self.step, self.per_epoch * 1000, self.per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = self.recipe.optim.lr * factor
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                loss = F.cross_entropy(self.model(inputs), self.train.targets[index], label_smoothing=self.smoothing)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
        return steps * self.batch


class ClassicSteps:
    """The classic PyTorch MNIST example's loop (its network, data path, optimiser and schedule)."""

    def __init__(self, overrides: list[str]) -> None:
        from torchvision import datasets, transforms

        from zoo.config.recipe import default_data_dir

        torch.manual_seed(1)
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        train = datasets.MNIST(str(default_data_dir()), train=True, download=True, transform=transform)
        self.loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
        self.batches = iter(self.loader)
        self.model = ClassicNet()
        self.optimizer = torch.optim.Adadelta(self.model.parameters(), lr=1.0)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.7)

    def run(self, steps: int) -> int:
        self.model.train()
        images = 0
        for _ in range(steps):
            try:
                data, target = next(self.batches)
            except StopIteration:
                self.scheduler.step()
                self.batches = iter(self.loader)
                data, target = next(self.batches)
            self.optimizer.zero_grad()
            loss = F.nll_loss(self.model(data), target)
            loss.backward()
            self.optimizer.step()
            images += len(target)
        return images


class ClassicNet(nn.Module):
    """The classic example's network (Dropout where it has Dropout2d on flat features, as zoo's mnist_cnn)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = self.dropout2(F.relu(self.fc1(torch.flatten(self.dropout1(x), 1))))
        return F.log_softmax(self.fc2(x), dim=1)


def _native_bf16() -> bool:
    from zoo.parallel.device import autocast_dtype

    return autocast_dtype("auto", torch.device("cpu")) is torch.bfloat16


def interleaved(contenders: dict[str, object], chunk: int, rounds: int) -> dict[str, object]:
    """Images/s of each contender per round, alternating ``chunk`` steps of each (one warm-up round first)."""
    names = list(contenders)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for number in range(rounds + 1):
        for name in names if number % 2 else reversed(names):
            started = time.perf_counter()
            images = contenders[name].run(chunk)
            if number:  # round 0 warms the allocator, oneDNN's kernels and the loader up
                rates[name].append(images / (time.perf_counter() - started))
    first, second = names
    ratios = [a / b for a, b in zip(rates[first], rates[second])]
    return {name: statistics.median(values) for name, values in rates.items()} | {
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
    }


def steps_table(chunk: int, rounds: int, only: list[str] | None = None) -> list[str]:
    """zoo against the hand loop at every batch size and precision (``only``: just those, as BATCH:PRECISION)."""
    lines = [
        "| batch | precision | zoo images/s | hand loop images/s | zoo / hand (median, range over rounds) |",
        "|---|---|---|---|---|",
    ]
    precisions = ["fp32", "bf16"] if _native_bf16() else ["fp32"]
    settings = [(batch, precision) for batch in (32, 64, 256) for precision in precisions]
    if only:
        settings = [(int(batch), precision) for batch, precision in (setting.split(":") for setting in only)]
    for batch, precision in settings:
        overrides = [f"data.batch_size={batch}", f"train.precision={precision}"]
        print(f"batch {batch}, {precision} ...", file=sys.stderr, flush=True)
        result = interleaved({"zoo": ZooSteps(overrides), "hand": HandSteps(overrides)}, chunk, rounds)
        low, high = result["ratio_range"]
        lines.append(
            f"| {batch} | {precision} | {result['zoo']:.0f} | {result['hand']:.0f} | "
            f"{result['ratio']:.3f}x ({low:.2f}-{high:.2f}) |"
        )
    return lines


def classic_table(chunk: int, rounds: int) -> list[str]:
    print("classic settings ...", file=sys.stderr, flush=True)
    result = interleaved({"zoo": ZooSteps(CLASSIC), "classic": ClassicSteps(CLASSIC)}, chunk, rounds)
    low, high = result["ratio_range"]
    return [
        "| contender (batch 64, fp32, Adadelta, StepLR) | images/s |",
        "|---|---|",
        f"| classic example's DataLoader loop | {result['classic']:.0f} |",
        f"| zoo, `{' '.join(CLASSIC)}` | {result['zoo']:.0f} |",
        f"| zoo / classic (median, range over rounds) | {result['ratio']:.3f}x ({low:.2f}-{high:.2f}) |",
    ]


def best_of(command: list[str], times: int = 3, **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    best, result = math.inf, None
    for _ in range(times):
        started = time.perf_counter()
        result = subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)
        best = min(best, time.perf_counter() - started)
    return best, result


def startup_table() -> list[str]:
    """A one-step `zoo run` of recipes/mnist.toml, against importing torch plus that run's test pass."""
    print("start-up ...", file=sys.stderr, flush=True)
    zoo = str(Path(sys.executable).with_name("zoo"))
    torch_import, _ = best_of([sys.executable, "-c", "import torch"])
    # torch.optim's first optimiser imports torch._dynamo (its methods are wrapped to be skipped by
    # torch.compile): a cost of every training loop, hand-written or not.
    optimiser = "import torch; torch.optim.AdamW([torch.zeros(1, requires_grad=True)])"
    with_optimiser, _ = best_of([sys.executable, "-c", optimiser])
    with tempfile.TemporaryDirectory() as scratch:
        run = [zoo, "run", str(RECIPE), "train.max_steps=1", "--quiet"]
        one_step = min(best_of([*run, f"output.dir={scratch}/{number}"], 1)[0] for number in range(3))
    test_seconds = test_pass_seconds()
    over = one_step - torch_import - test_seconds
    return [
        "| | seconds |",
        "|---|---|",
        f'| `python -c "import torch"` | {torch_import:.2f} |',
        f"| ... and create one torch.optim optimiser (imports torch._dynamo) | {with_optimiser:.2f} |",
        f"| the run's test pass (zoo's evaluate on the 10,000 test images) | {test_seconds:.2f} |",
        f"| one-step `zoo run recipes/mnist.toml train.max_steps=1 --quiet` | {one_step:.2f} |",
        f"| over import + test pass (goal: at most 1.5) | {over:.2f} ({'met' if over <= 1.5 else 'NOT met'}) |",
        f"| over import with an optimiser + test pass | {one_step - with_optimiser - test_seconds:.2f} |",
    ]


# The run's test pass as its own process would take it: the first evaluation, caches cold.
TEST_PASS = f"""
import time
from zoo.config.recipe import load
from zoo.inference.evaluate import evaluate
from zoo.training.setup import build_run

setup = build_run(load({str(RECIPE)!r}), progress=False)
batches = setup.batches(setup.splits.test)
started = time.perf_counter()
evaluate(setup.model, batches, setup.loss_fn, setup.splits.label_names, setup.dtype)
print(time.perf_counter() - started)
"""


def test_pass_seconds() -> float:
    """zoo's evaluation of the MNIST test split, as a run's finish does it: the best of three fresh processes."""
    return min(float(subprocess.run([sys.executable, "-c", TEST_PASS], check=True, capture_output=True,
                                    text=True).stdout) for _ in range(3))  # fmt: skip


def machine() -> str:
    model = platform.processor() or platform.machine()
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line for line in info.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    native = [name for name in ("avx512_bf16", "amx_bf16") if f" {name}" in flags]
    return f"{model}, {os.cpu_count()} cores ({', '.join(native) or 'no native bf16'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk", type=int, default=40, help="optimiser steps of each contender per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of alternating chunks (one more warms up)")
    parser.add_argument("--only", nargs="+", metavar="BATCH:PRECISION", help="just these steps (e.g. 32:fp32)")
    parser.add_argument("--startup", action="store_true", help="just the start-up table (printed, not written)")
    parser.add_argument("--write", action="store_true", help=f"put the tables in bench/RESULTS.md under '{SECTION}'")
    args = parser.parse_args()
    from zoo.parallel.device import configure

    configure(torch.device("cpu"), deterministic=False)
    header = [
        f"Command: `python bench/step_bench.py {' '.join(sys.argv[1:])}`",
        f"Date: {date.today().isoformat()}; CPU: {machine()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; chunks of {args.chunk} steps, {args.rounds} rounds",
        "",
    ]
    if args.only or args.startup:  # a second look: printed, not written
        print("\n".join(header + (steps_table(args.chunk, args.rounds, args.only) if args.only else startup_table())))
        return
    body = [
        *steps_table(args.chunk, args.rounds),
        "",
        *classic_table(args.chunk, args.rounds),
        "",
        *startup_table(),
    ]
    table = "\n".join(header + body) + "\n"
    print(table)
    if args.write:
        write_section(REPO / "bench" / "RESULTS.md", SECTION, table)


def write_section(results: Path, heading: str, body: str) -> None:
    """Replace the section under ``heading`` in ``results`` (or add it at the end); the others are kept."""
    text = results.read_text() if results.exists() else ""
    start = text.find(f"\n{heading}\n")
    section = f"\n{heading}\n\n{body}"
    if start < 0:
        text = text.rstrip("\n") + "\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    results.write_text(text)


if __name__ == "__main__":
    main()
