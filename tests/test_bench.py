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
