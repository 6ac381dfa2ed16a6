"""Where a run computes: the device, and the autocast precision that suits it."""

from __future__ import annotations

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
