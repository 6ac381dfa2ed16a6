"""Where a run computes: the device, the autocast precision that suits it, and the host allocator."""

from __future__ import annotations

import ctypes
import os
import platform

import torch

from ..errors import ZooError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[name]:
        raise ZooError(f"train.device = '{name}', but this machine has no {name.upper()} device; use train.device=auto")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    auto: on CUDA, bf16 where the GPU computes it natively (Ampere and later), else fp16 with the
    grad scaler; on a CPU, bf16 where it computes bf16 natively (AVX512-BF16 or AMX: 1.5x fp32's
    throughput), else fp32 (emulated bf16 convolutions are several times slower than fp32's);
    fp32 on any other device.
    """
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        elif device.type == "cpu" and cpu_has_native_bf16():
            precision = "bf16"
        else:
            precision = "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_has_native_bf16() -> bool:
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def configure(device: torch.device, deterministic: bool) -> None:
    """The backend settings a run uses: reproducible kernels, or the fastest ones on CUDA.

    Deterministic runs warn, rather than stop, at an op without a deterministic kernel. Otherwise
    CUDA matmuls and convolutions use TF32 tensor cores and cuDNN picks its fastest algorithms.
    """
    warning_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if torch.are_deterministic_algorithms_enabled() != deterministic or (deterministic and not warning_only):
        # Only when it changes something: the call imports torch._inductor's config, seconds of start-up.
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type == "cuda":
        fast = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = fast
        torch.backends.cudnn.allow_tf32 = fast
        torch.backends.cudnn.benchmark = fast
        torch.backends.cudnn.deterministic = deterministic


# glibc's mallopt parameters (malloc.h), and the largest mmap threshold it accepts on a 64-bit system.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LARGEST_MMAP_THRESHOLD = 32 << 20


def keep_freed_host_memory() -> bool:
    """Have glibc's malloc keep the memory a step frees for the next step; whether it was set.

    A step on the CPU allocates and frees its activations, megabytes each. By default glibc maps the
    largest afresh and hands freed memory back to the system, so every step page-faults them in again
    (thousands of faults a step for the MNIST CNN at batch 32, none once kept): blocks of up to 32 MiB
    now come from the heap, which is never trimmed. ``bench/step_bench.py --allocator``: steps
    1.15x-1.33x faster, the test pass 1.32x; the cost is a higher peak (5-12% in a review's runs: the
    heap's fragments), held until the process exits. PyTorch's own CPU launcher
    (``torch.backends.xeon.run_cpu``) preloads tcmalloc or jemalloc for the same reason.

    The process's setting, so only ``zoo run`` and ``zoo eval`` make it, which own theirs; not where
    the allocator is not glibc's (another libc, or a malloc in ``LD_PRELOAD``), nor where the user
    tuned glibc's (``GLIBC_TUNABLES`` glibc.malloc.*, any ``MALLOC_*`` variable).
    """
    if platform.libc_ver()[0] != "glibc" or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or any(
        name.startswith("MALLOC_") for name in os.environ
    ):
        return False
    libc = ctypes.CDLL(None)
    # Setting the mmap threshold also stops glibc from moving it (and the trim threshold) by itself.
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _LARGEST_MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    )
