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
    grad scaler; fp32 elsewhere (a CPU's bf16 speed varies too much to choose it unasked).
    """
    if precision == "auto":
        if device.type != "cuda":
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def configure(device: torch.device, deterministic: bool) -> None:
    """The backend settings a run uses: reproducible kernels, or the fastest ones on CUDA.

    Deterministic runs warn, rather than stop, at an op without a deterministic kernel. Otherwise
    CUDA matmuls and convolutions use TF32 tensor cores and cuDNN picks its fastest algorithms.
    """
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type == "cuda":
        fast = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = fast
        torch.backends.cudnn.allow_tf32 = fast
        torch.backends.cudnn.benchmark = fast
        torch.backends.cudnn.deterministic = deterministic
