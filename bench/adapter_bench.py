"""LoRA against full fine-tuning of the same ViT, data and epochs: what trains, what is shared, memory, accuracy.

    python bench/adapter_bench.py                       # about 6 minutes on 2 cores
    python bench/adapter_bench.py --backbone timm/test_vit --pretrain-per-class 20 --per-class 10 \\
        --pretrain-epochs 1 --epochs 1                  # the tiny run tests/test_bench.py makes

First a zoo recipe pretrains the backbone (default timm's vit_tiny_patch16_224, built for 32 px
MNIST tensors: 5 tokens, 5.5M parameters) on digits 0-4. Then two runs fine-tune it for digits
5-9 from the same few examples a class, the same epochs, batch and seed, each in a process of its
own so that its peak memory is its own:

  full  every weight trains (AdamW, lr --lr)
  lora  model.adapter = LoRA on the attention (qkv, proj) and the MLP (fc1, fc2) at rank 6
        (--target, --rank; alpha = 2 x rank), the head in full, every other weight frozen (AdamW,
        lr --lora-lr: adapters start at zero and take a larger step, as peft's examples do)

Reported, side by side: trainable parameters (the full run: every tensor of model.safetensors;
the LoRA run: every tensor of adapter_model.safetensors, which holds exactly what trained), the
file each run would share (model.safetensors against `zoo push --adapter-only`'s
adapter_model.safetensors), the peak resident memory of the process (ru_maxrss; both import peft
first and read the same data, so the difference is the training's, plus the copy of the model
the LoRA run merges at its end), results.json's training seconds and
test accuracy. Targets (issue #30): trainable under 5%, adapter under 5% of model.safetensors,
peak memory lower, test accuracy within 1 point.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMON = ["data.image_size=32", "data.batch_size=32", "train.precision=fp32", "data.val_split=0", "train.seed=0"]


def train(recipe_overrides: list[str], output: Path) -> dict:
    """One run in this process (``--child``): its results and this process's peak resident memory."""
    import peft  # noqa: F401  both kinds of run import it first: its import is no part of either's training

    from zoo.config import recipe as recipes
    from zoo.training.runner import run

    result = run(recipes.load(REPO / "recipes" / "mnist.toml", [*recipe_overrides, f"output.dir={output}"]),
                 progress=False)  # fmt: skip
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"results": result.results.model_dump(exclude_none=True), "peak_mib": peak_kib / 1024}


def in_child(overrides: list[str], output: Path) -> dict:
    """``train`` in a fresh Python process, so that each run's peak memory is its own."""
    command = [sys.executable, __file__, "--child", str(output), *overrides]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.splitlines()[-1])


def tensor_count(path: Path) -> int:
    """The number of values in the tensors of a safetensors file (read from its header)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="timm/vit_tiny_patch16_224")
    parser.add_argument("--pretrain-per-class", type=int, default=300)
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=100, help="fine-tuning examples per digit (5-9)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3, help="full fine-tuning's learning rate")
    parser.add_argument("--lora-lr", type=float, default=5e-3)
    parser.add_argument("--rank", type=int, default=6)
    parser.add_argument("--target", default="qkv|proj|fc1|fc2", help="regular expression over module names")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    arguments, rest = parser.parse_known_args()
    if arguments.child is not None:
        print(json.dumps(train(rest, arguments.child)))
        return

    with tempfile.TemporaryDirectory(prefix="adapter-bench-") as scratch:
        root = Path(scratch)
        backbone = [f"model.backbone={arguments.backbone}", *COMMON]
        pretrain = [*backbone, "data.classes=[0,1,2,3,4]", f"data.per_class={arguments.pretrain_per_class}",
                    f"train.epochs={arguments.pretrain_epochs}", "optim.lr=1e-3"]  # fmt: skip
        base = in_child(pretrain, root / "base")
        print(f"pretrained {arguments.backbone} on digits 0-4: {100 * base['results']['test']['accuracy']:.2f}%",
              file=sys.stderr)  # fmt: skip
        finetune = [*backbone, "data.classes=[5,6,7,8,9]", f"data.per_class={arguments.per_class}",
                    f"train.epochs={arguments.epochs}", f"model.pretrained={root / 'base'}"]  # fmt: skip
        adapter = f'model.adapter={{target = "{arguments.target}", r = {arguments.rank}, alpha = {2 * arguments.rank}}}'
        runs = {
            "full": in_child([*finetune, f"optim.lr={arguments.lr}"], root / "full"),
            "lora": in_child([*finetune, f"optim.lr={arguments.lora_lr}", adapter], root / "lora"),
        }
        total = tensor_count(root / "full" / "model.safetensors")
        trainable = {"full": total, "lora": tensor_count(root / "lora" / "adapter_model.safetensors")}
        shared = {"full": (root / "full" / "model.safetensors").stat().st_size,
                  "lora": (root / "lora" / "adapter_model.safetensors").stat().st_size}  # fmt: skip
        merged_size = (root / "lora" / "model.safetensors").stat().st_size

    print(f"{arguments.backbone} (img_size 32, {total:,} parameters), pretrained on digits 0-4 "
          f"({100 * base['results']['test']['accuracy']:.2f}% test accuracy); fine-tuned on digits 5-9, "
          f"{arguments.per_class} a class, {arguments.epochs} epochs, batch 32, fp32, seed 0; CPU: {cpu_model()}")  # fmt: skip
    print()
    print("| run | trainable parameters | shared file | peak memory (RSS) | training time | test accuracy |")
    print("|---|---|---|---|---|---|")
    target = arguments.target.replace("|", r"\|")  # a | in a Markdown table cell is written \|
    names = {"full": f"full fine-tuning (lr {arguments.lr:g})",
             "lora": f"LoRA r={arguments.rank} on `{target}` + head (lr {arguments.lora_lr:g})"}  # fmt: skip
    files = {"full": "model.safetensors", "lora": "adapter_model.safetensors"}
    for kind, measured in runs.items():
        results = measured["results"]
        print(f"| {names[kind]} | {trainable[kind]:,} ({100 * trainable[kind] / total:.2f}%) | "
              f"{files[kind]} {shared[kind] / 1e6:.2f} MB ({100 * shared[kind] / merged_size:.2f}%) | "
              f"{measured['peak_mib']:.0f} MiB | {results['train_seconds']:.1f} s | "
              f"{100 * results['test']['accuracy']:.2f}% |")  # fmt: skip
    full, lora = runs["full"], runs["lora"]
    gap = 100 * (full["results"]["test"]["accuracy"] - lora["results"]["test"]["accuracy"])
    print()
    print(f"targets: trainable {100 * trainable['lora'] / total:.2f}% (< 5%: {trainable['lora'] < total / 20}), "
          f"adapter file {100 * shared['lora'] / merged_size:.2f}% of model.safetensors "
          f"(< 5%: {shared['lora'] < merged_size / 20}), peak memory {lora['peak_mib']:.0f} vs {full['peak_mib']:.0f} MiB "
          f"(lower: {lora['peak_mib'] < full['peak_mib']}), accuracy {gap:+.2f} points behind full "
          f"(within 1: {gap <= 1.0})")  # fmt: skip


if __name__ == "__main__":
    main()
