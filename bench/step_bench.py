"""What zoo adds to a training step, measured against hand-written loops in the same process.

    ZOO_DATA_DIR=../shared/data python bench/step_bench.py             # every setting, 3-4 minutes on 2 cores
    ZOO_DATA_DIR=../shared/data python bench/step_bench.py --rounds 3  # a quicker, noisier look
    ZOO_DATA_DIR=../shared/data python bench/step_bench.py --write     # and into bench/RESULTS.md

Each setting trains two contenders on MNIST in one interpreter, in alternating chunks of
``--chunk`` optimiser steps (their order swapped every round), and reports the median images/s of
each over ``--rounds`` rounds and the median of the per-round ratios: a machine shared with other
work slows both sides of a round alike, which a run-after-run comparison cannot promise. The
interpreter keeps freed memory as ``zoo run`` does (``keep_freed_host_memory``), for both sides.

  zoo     zoo's own ``Trainer`` (zoo/training/loop.py) on recipes/mnist.toml with the setting's overrides,
          its epochs cut into chunks by ``max_steps``: the step `zoo run` takes, with its bookkeeping
  hand    the same model, recipe and in-memory uint8 tensors in the best plain loop (one parameter group,
          torch's fastest optimiser kernel, zoo's own lr schedule function, the memory format zoo picks;
          nothing else of zoo's)
  classic the classic PyTorch example's loop at its own settings: torchvision MNIST with per-item
          ToTensor + Normalize, DataLoader(batch 64, shuffle), Adadelta(lr 1.0), StepLR(gamma 0.7), fp32;
          zoo runs the same settings (``CLASSIC`` below)

Also measured: zoo's steps and test pass with the model and batches in channels-last memory format
(train.channels_last = "auto" on the CPU) against the contiguous one, alternating in one process
(``--memory-format``); zoo's steps with its fused optimiser against torch's foreach kernel of the
same optimiser (``--optimizer-kernel``); each in a fresh process: zoo's steps and test pass with glibc's default malloc settings
and with those ``zoo run`` makes (``keep_freed_host_memory``), processes of each alternating; and in
five rounds, a one-step run of recipes/mnist.toml against ``python -c "import torch"`` plus the run's
own test pass (the test time it reports), the median of each round's difference.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "mnist.toml"
CPU = torch.device("cpu")
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

    def __init__(self, overrides: list[str], foreach: bool = False) -> None:
        from zoo.config.recipe import load
        from zoo.runs.folder import RunFolder
        from zoo.training.loop import Trainer
        from zoo.training.setup import build_run, seed_everything

        folder = Path(tempfile.mkdtemp()) / "run"
        self.recipe = load(RECIPE, [*overrides, f"output.dir={folder}", "train.epochs=1000"])
        setup = build_run(self.recipe, progress=False)
        if foreach:  # the same optimiser over the same groups with torch's foreach kernel, not zoo's fused one
            kernels, accepted = ("fused", "foreach"), inspect.signature(type(setup.optimizer)).parameters
            options = {key: value for key, value in setup.optimizer.defaults.items()
                       if key in accepted and key not in kernels}  # fmt: skip
            groups = [{key: value for key, value in group.items() if key not in kernels} for group in setup.groups]
            setup.optimizer = type(setup.optimizer)(groups, **options, foreach=True)
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
        from zoo.inference.prepared import channels_last

        self.recipe = recipe = load(RECIPE, overrides)
        torch.manual_seed(0)
        self.train = zoo.create_dataset("mnist", default_data_dir(), "train")
        backbone = zoo.create_model("mnist_cnn")
        self.model = nn.Sequential(backbone, nn.Linear(backbone.num_features, 10))
        # The memory format zoo picks for the recipe (channels-last on the CPU): the same arithmetic.
        in_channels_last = channels_last(recipe.train, CPU, self.model)
        self.memory_format = torch.channels_last if in_channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        # torch's fastest kernel for each: fused AdamW, foreach Adadelta (torch has no fused one)
        optimizer, kernel = {"adamw": (torch.optim.AdamW, "fused"), "adadelta": (torch.optim.Adadelta, "foreach")}[
            recipe.optim.name
        ]
        self.optimizer = optimizer(
            self.model.parameters(), lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay, **{kernel: True}
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
            inputs = inputs.contiguous(memory_format=self.memory_format)
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


class TestPasses:
    """zoo's evaluation of the MNIST test split, as a run's finish does it: a pass per ``run``."""

    def __init__(self, overrides: list[str]) -> None:
        from zoo.config.recipe import load
        from zoo.training.setup import build_run

        self.setup = build_run(load(RECIPE, overrides), progress=False)
        self.batches = self.setup.batches(self.setup.splits.test)

    def run(self, steps: int) -> int:
        """One pass (whatever ``steps``); the images evaluated."""
        from zoo.inference.evaluate import evaluate

        setup = self.setup
        evaluate(setup.model, self.batches, setup.loss_fn, setup.splits.label_names, setup.dtype)
        return len(setup.splits.test)


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

    return autocast_dtype("auto", CPU) is torch.bfloat16


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


def memory_format_table(chunk: int, rounds: int) -> list[str]:
    """zoo's steps and test pass with the model and batches in channels-last memory format (what
    train.channels_last = "auto" picks on the CPU) and in the contiguous one, alternating in one process."""
    lines = [
        "| zoo's (batch:precision) | contiguous images/s | channels-last images/s | "
        "channels-last / contiguous (median, range over rounds) |",
        "|---|---|---|---|",
    ]
    precision = "bf16" if _native_bf16() else "fp32"
    for setting in ("32:fp32", f"64:{precision}", f"256:{precision}", "classic", "test"):
        print(f"memory format, {setting} ...", file=sys.stderr, flush=True)
        if setting == "classic":
            overrides, name = CLASSIC, "classic settings (64:fp32, Adadelta)"
        elif setting == "test":
            overrides, name = [], f"test pass (10,000 images, 512:{precision})"
        else:
            batch, precision_here = setting.split(":")
            overrides, name = [f"data.batch_size={batch}", f"train.precision={precision_here}"], setting
        contender = TestPasses if setting == "test" else ZooSteps
        sides = {"channels_last": contender([*overrides, "train.channels_last=true"]),
                 "contiguous": contender([*overrides, "train.channels_last=false"])}  # fmt: skip
        result = interleaved(sides, chunk, rounds)
        low, high = result["ratio_range"]
        lines.append(
            f"| {name} | {result['contiguous']:.0f} | {result['channels_last']:.0f} | "
            f"{result['ratio']:.3f}x ({low:.2f}-{high:.2f}) |"
        )
    return lines


def kernel_table(chunk: int, rounds: int) -> list[str]:
    """zoo's steps with its fused AdamW and with the same optimiser's foreach kernel, alternating in one process."""
    lines = [
        "| zoo's (batch:precision) | foreach images/s | fused images/s | fused / foreach (median, range over rounds) |",
        "|---|---|---|---|",
    ]
    precision = "bf16" if _native_bf16() else "fp32"
    for setting in ("32:fp32", f"64:{precision}", f"256:{precision}"):
        print(f"optimiser kernel, {setting} ...", file=sys.stderr, flush=True)
        batch, precision_here = setting.split(":")
        overrides = [f"data.batch_size={batch}", f"train.precision={precision_here}"]
        result = interleaved(
            {"fused": ZooSteps(overrides), "foreach": ZooSteps(overrides, foreach=True)}, chunk, rounds
        )
        low, high = result["ratio_range"]
        lines.append(
            f"| {setting} | {result['foreach']:.0f} | {result['fused']:.0f} | {result['ratio']:.3f}x ({low:.2f}-{high:.2f}) |"
        )
    return lines


def allocator_child(setting: str, kept: bool, chunk: int) -> float:
    """One side of ``allocator_table`` in this process: zoo's steps (or its test pass) in images/s
    (this process's peak memory then says what keeping freed memory costs)."""
    if kept:
        from zoo.parallel.device import keep_freed_host_memory

        assert keep_freed_host_memory(), "glibc's malloc, untuned by the environment, is needed here"
    if setting == "test":
        passes, rates = TestPasses([]), []
        for _ in range(3):
            started = time.perf_counter()
            rates.append(passes.run(1) / (time.perf_counter() - started))
        return statistics.median(rates)
    overrides = CLASSIC if setting == "classic" else [f"data.batch_size={setting.split(':')[0]}",
                                                      f"train.precision={setting.split(':')[1]}"]  # fmt: skip
    steps = ZooSteps(overrides)
    steps.run(chunk // 4)  # warms oneDNN's kernels up
    rates = []
    for _ in range(4):
        started = time.perf_counter()
        rates.append(steps.run(chunk) / (time.perf_counter() - started))
    return statistics.median(rates)


def allocator_table(chunk: int, pairs: int) -> list[str]:
    """zoo's steps and test pass with glibc's default malloc settings and with those `zoo run` and
    `zoo eval` make (``keep_freed_host_memory``): a process's setting, so a process per side, the
    two sides alternating ``pairs`` times."""
    lines = [
        "| zoo's (batch:precision) | glibc's default images/s | kept for the next step images/s | "
        "kept / default (median, range over pairs) | peak MiB, default / kept (median) |",
        "|---|---|---|---|---|",
    ]
    precision = "bf16" if _native_bf16() else "fp32"
    for setting in ("32:fp32", f"256:{precision}", "classic", "test"):
        print(f"allocator, {setting} ...", file=sys.stderr, flush=True)
        rates: dict[bool, list[float]] = {False: [], True: []}
        peaks: dict[bool, list[float]] = {False: [], True: []}
        for number in range(pairs):
            for kept in (False, True) if number % 2 else (True, False):
                child = [sys.executable, __file__, "--chunk", str(chunk), "--allocator-child", setting]
                output = subprocess.run([*child, *(["--kept"] if kept else [])], check=True, capture_output=True,
                                        text=True).stdout  # fmt: skip
                rate, peak = map(float, output.split())
                rates[kept].append(rate)
                peaks[kept].append(peak)
        ratios = [kept / default for kept, default in zip(rates[True], rates[False])]
        name = {"classic": "classic settings (64:fp32, Adadelta)", "test": "test pass (10,000 images, 512:"
                f"{precision})"}.get(setting, setting)  # fmt: skip
        lines.append(
            f"| {name} | {statistics.median(rates[False]):.0f} | {statistics.median(rates[True]):.0f} | "
            f"{statistics.median(ratios):.3f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
            f"{statistics.median(peaks[False]):.0f} / {statistics.median(peaks[True]):.0f} |"
        )
    return lines


def seconds(command: list[str]) -> float:
    """The wall time of ``command`` in a fresh process."""
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def startup_table(rounds: int = 5) -> list[str]:
    """A one-step `zoo run` of recipes/mnist.toml, against importing torch plus that run's test pass:
    each measured once a round, so that a slow spell of the machine slows one round, not one side."""
    print("start-up ...", file=sys.stderr, flush=True)
    zoo = str(Path(sys.executable).with_name("zoo"))
    # torch.optim's first optimiser imports torch._dynamo (its methods are wrapped to be skipped by
    # torch.compile): a cost of every training loop, hand-written or not.
    optimiser = "import torch; torch.optim.AdamW([torch.zeros(1, requires_grad=True)])"
    measured: dict[str, list[float]] = {"import": [], "optimiser": [], "test": [], "run": []}
    with tempfile.TemporaryDirectory() as scratch:
        for number in range(rounds):
            measured["import"].append(seconds([sys.executable, "-c", "import torch"]))
            measured["optimiser"].append(seconds([sys.executable, "-c", optimiser]))
            measured["test"].append(test_pass_seconds())
            run = [zoo, "run", str(RECIPE), "train.max_steps=1", "--quiet", f"output.dir={scratch}/{number}"]
            measured["run"].append(seconds(run))
    rows = zip(measured["run"], measured["import"], measured["optimiser"], measured["test"])
    over, over_optimiser = zip(
        *((run - imported - test, run - optimiser - test) for run, imported, optimiser, test in rows)
    )

    def median(values: Sequence[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    goal = "met" if statistics.median(over) <= 1.5 else "NOT met"
    return [
        f"| median of {rounds} rounds (range) | seconds |",
        "|---|---|",
        f'| `python -c "import torch"` | {median(measured["import"])} |',
        f"| ... and create one torch.optim optimiser (imports torch._dynamo) | {median(measured['optimiser'])} |",
        f"| the run's test pass (zoo's evaluate on the 10,000 test images) | {median(measured['test'])} |",
        f"| one-step `zoo run recipes/mnist.toml train.max_steps=1 --quiet` | {median(measured['run'])} |",
        f"| the run over import + test pass, in the same round (goal: at most 1.5) | {median(over)} ({goal}) |",
        f"| the run over import with an optimiser + test pass, in the same round | {median(over_optimiser)} |",
    ]


# The run's test pass as its own process would take it: the first evaluation, caches cold, malloc set
# as `zoo run` sets it.
TEST_PASS = f"""
import time
from zoo.config.recipe import load
from zoo.inference.evaluate import evaluate
from zoo.parallel.device import keep_freed_host_memory
from zoo.training.setup import build_run

keep_freed_host_memory()
setup = build_run(load({str(RECIPE)!r}), progress=False)
batches = setup.batches(setup.splits.test)
started = time.perf_counter()
evaluate(setup.model, batches, setup.loss_fn, setup.splits.label_names, setup.dtype)
print(time.perf_counter() - started)
"""


def test_pass_seconds() -> float:
    """zoo's evaluation of the MNIST test split, as a run's finish does it, in a fresh process."""
    return float(subprocess.run([sys.executable, "-c", TEST_PASS], check=True, capture_output=True, text=True).stdout)


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
    parser.add_argument("--allocator", action="store_true", help="just the allocator table (printed, not written)")
    parser.add_argument("--pairs", type=int, default=4, help="the allocator table's pairs of processes")
    parser.add_argument(
        "--memory-format", action="store_true", help="just the channels-last table (printed, not written)"
    )
    parser.add_argument(
        "--optimizer-kernel", action="store_true", help="just the fused-against-foreach table (printed, not written)"
    )
    parser.add_argument("--write", action="store_true", help=f"put the tables in bench/RESULTS.md under '{SECTION}'")
    parser.add_argument("--allocator-child", metavar="SETTING", help=argparse.SUPPRESS)
    parser.add_argument("--kept", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.allocator_child:
        rate = allocator_child(args.allocator_child, args.kept, args.chunk)
        print(rate, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux
        return
    from zoo.parallel.device import configure, keep_freed_host_memory

    configure(CPU, deterministic=False)
    # Both sides of the in-process tables keep freed memory as `zoo run` does: what zoo adds, not what
    # glibc's defaults take from a hand loop (that is the allocator table's, a process per side).
    keep_freed_host_memory()
    header = [
        f"Command: `python bench/step_bench.py {' '.join(sys.argv[1:])}`",
        f"Date: {date.today().isoformat()}; CPU: {machine()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; chunks of {args.chunk} steps, {args.rounds} rounds",
        "",
    ]
    if args.only or args.startup or args.allocator or args.memory_format or args.optimizer_kernel:  # printed only
        if args.only:
            body = steps_table(args.chunk, args.rounds, args.only)
        elif args.memory_format:
            body = memory_format_table(args.chunk, args.rounds)
        elif args.optimizer_kernel:
            body = kernel_table(args.chunk, args.rounds)
        else:
            body = startup_table() if args.startup else allocator_table(args.chunk, args.pairs)
        print("\n".join(header + body))
        return
    body = [
        *steps_table(args.chunk, args.rounds),
        "",
        *classic_table(args.chunk, args.rounds),
        "",
        *memory_format_table(args.chunk, args.rounds),
        "",
        *kernel_table(args.chunk, args.rounds),
        "",
        *allocator_table(args.chunk, args.pairs),
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
