"""The benchmarks' own checks that can run anywhere, so that they cannot rot between GPU machines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_the_gpu_check_lists_what_it_measures_and_its_recipes_still_load(mnist_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    for check in ("mnist auto precision", "mnist bf16", "mnist fp16", "mnist compile", "timm 224 px", "model alone"):
        assert check in result.stdout, check


def test_the_export_bench_verifies_then_times_both_sides() -> None:
    arguments = ["--models", "mnist_cnn", "test_resnet", "--size", "32", "--batch", "4", "--calls", "3"]  # fmt: skip
    arguments += ["--repeats", "1"]
    bench = REPO / "bench" / "export_bench.py"
    result = subprocess.run([sys.executable, str(bench), *arguments], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith(("| mnist", "| test"))]
    assert [row[0].strip() for row in rows] == ["mnist_cnn", "test_resnet"]
    for row in rows:  # every figure measured, every ratio the quotient of the two beside it
        eager_ms, served_ms, latency_ratio = float(row[2]), float(row[3]), float(row[4].strip(" x"))
        assert eager_ms > 0 and served_ms > 0
        low, high = (eager_ms - 0.005) / (served_ms + 0.005), (eager_ms + 0.005) / max(served_ms - 0.005, 1e-9)
        assert low - 0.005 <= latency_ratio <= high + 0.005  # the figures are printed rounded
    assert result.stderr.count("verified") == 2
