"""The device, the autocast precision that suits it, and the backend settings a run uses."""

from __future__ import annotations

import pytest
import torch

from zoo.device import autocast_dtype, configure, resolve_device
from zoo.errors import ZooError


def test_auto_precision_is_fp32_on_the_cpu_and_explicit_choices_are_kept() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None
    assert (autocast_dtype("bf16", cpu), autocast_dtype("fp16", cpu), autocast_dtype("fp32", cpu)) == (
        torch.bfloat16,
        torch.float16,
        None,
    )


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_precision_on_cuda_is_bf16_only_where_native(
    native_bf16: bool, expected: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def supported(including_emulation: bool = True) -> bool:
        calls.append(including_emulation)
        return native_bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert autocast_dtype("auto", torch.device("cuda")) is expected
    assert calls == [False]  # emulated bf16 is slower than fp16 with a scaler


def test_deterministic_runs_warn_instead_of_failing_on_ops_without_deterministic_kernels() -> None:
    try:
        configure(torch.device("cpu"), deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        configure(torch.device("cpu"), deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_missing_device_is_one_line() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the CI machines have none; the GPU check covers CUDA
    with pytest.raises(ZooError, match="train.device = 'cuda', but this machine has no CUDA device"):
        resolve_device("cuda")
