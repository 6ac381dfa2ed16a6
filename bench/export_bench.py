"""Serving speed: an exported ONNX model under onnxruntime against the same model in eager PyTorch.

    python bench/export_bench.py                       # about a minute on 2 cores
    python bench/export_bench.py --models resnet10t --size 224

For each model (zoo's mnist_cnn with its head at 1x28x28, timm's resnet10t at 3xSIZExSIZE, both
with random weights: speed does not depend on them) `zoo export`'s own path makes a verified ONNX
file with a dynamic batch (zoo.inference.export.export_model), then both sides run on the same inputs in
this process, one after the other, on the CPU with torch's and onnxruntime's default threads:

  latency     one image per call: the median of --calls calls, after 10 warm-up calls
  throughput  batches of --batch images: the best of --repeats, in images/s

Reported: each side's figures and onnxruntime's as a ratio of eager PyTorch's (latency: eager /
onnxruntime, so above 1 means onnxruntime is faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from zoo.config.schema import ModelConfig
from zoo.inference.export import export_model, onnx_runner, onnx_session
from zoo.models.build import build_model


def build(name: str, size: int) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    if name == "mnist_cnn":
        model, _ = build_model(ModelConfig(backbone="mnist_cnn", pretrained=False), [str(d) for d in range(10)])
        return model.eval(), (1, 28, 28)
    model, _ = build_model(ModelConfig(backbone=f"timm/{name}", pretrained=False), [str(d) for d in range(10)])
    return model.eval(), (3, size, size)


def latency(run: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, calls: int) -> float:
    for _ in range(10):
        run(image)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(run: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, repeats: int) -> float:
    run(batch)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        best = min(best, time.perf_counter() - start)
    return len(batch) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mnist_cnn", "resnet10t"])
    parser.add_argument("--size", type=int, default=224, help="timm models' input side (default: 224)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print("| model | input | eager ms/img | onnxruntime ms/img | latency ratio | eager img/s | onnxruntime img/s | throughput ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model, shape = build(name, args.size)
        inputs = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "model.onnx"
            exported = export_model(model, inputs, "onnx", path, {"label_names": []}, dynamic_batch=True)
            onnxruntime = onnx_runner(onnx_session(path, str(path)))
            with torch.inference_mode():
                eager = [latency(model, inputs[:1], args.calls), throughput(model, inputs, args.repeats)]
            served = [latency(onnxruntime, inputs[:1], args.calls), throughput(onnxruntime, inputs, args.repeats)]
        print(
            f"| {name} | {'x'.join(map(str, shape))} | {1e3 * eager[0]:.2f} | {1e3 * served[0]:.2f} | "
            f"{eager[0] / served[0]:.2f}x | {eager[1]:,.0f} | {served[1]:,.0f} | {served[1] / eager[1]:.2f}x |"
        )
        print(f"  ({name}: verified, max |logit difference| {exported.max_abs_diff:.1e})", file=sys.stderr)


if __name__ == "__main__":
    main()
