"""Fully sharded data parallel (``train.strategy = "fsdp"``): each rank holds 1/N of the model.

torch's FSDP2 (``torch.distributed.fsdp.fully_shard``) splits every parameter, its gradient and
its optimiser state across the ranks, and gathers one unit's whole parameters only while that
unit runs: for backbones whose weights and Adam state do not fit one GPU. What this changes for
the rest of zoo, and where it is handled:

- the forward pass is a collective: every rank must call it as often as the others
  (``evaluate`` pads the ranks with fewer batches);
- ``state_dict()`` holds DTensors: a checkpoint keeps each rank's own shards (``local``), which
  that rank writes and reads itself (``checkpoint.save``/``load_own``), resumed only at the same
  world size; the run folder's weights are gathered whole on rank 0 (``full_state_dict``);
- the optimiser is built after sharding, on the sharded parameters (``training.setup.build_run``).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from .distributed import is_dtensor

# A unit is gathered whole while it runs: units of about 1/32 of the model keep a few in memory at
# once, without one collective per tiny layer.
UNITS = 32


def shard(model: nn.Module) -> None:
    """Shard ``model`` in place: its larger submodules as units of their own, the rest with the root."""
    from torch.distributed.fsdp import fully_shard

    threshold = max(1, sum(p.numel() for p in model.parameters()) // UNITS)

    def shard_below(module: nn.Module) -> int:
        """Shard ``module``'s large enough descendants (innermost first); its parameters left unsharded."""
        left = sum(p.numel() for p in module.parameters(recurse=False))
        for child in module.children():
            child_left = shard_below(child)
            if child_left >= threshold:
                fully_shard(child)
            else:
                left += child_left
        return left

    shard_below(model)
    fully_shard(model)


def is_sharded(model: nn.Module) -> bool:
    # No model is sharded before torch.distributed.fsdp is imported: a run that never shards never
    # imports it (nor DTensor, a second of start-up).
    imported = sys.modules.get("torch.distributed.fsdp")
    return imported is not None and isinstance(model, imported.FSDPModule)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor; any other tensor as it is."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights: ``state_dict()``, or for a sharded model gathered on rank 0 (a collective;
    the other ranks get an empty dict)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@torch.no_grad()
def load_local_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy this rank's saved shards (and the buffers) into a sharded model, checking names and shapes."""
    current = model.state_dict()
    if current.keys() != tensors.keys():
        missing = sorted(current.keys() - tensors.keys()) or sorted(tensors.keys() - current.keys())
        raise KeyError(f"the model's tensors differ from the saved ones, e.g. '{missing[0]}'")
    for name, target in current.items():
        target = local(target)
        if target.shape != tensors[name].shape:
            raise ValueError(f"'{name}' is {tuple(tensors[name].shape)}, the model's shard {tuple(target.shape)}")
        target.copy_(tensors[name])


def sharded_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Saved optimiser tensors (``optim.INDEX.NAME``, local shards) as DTensors laid out like their parameters."""
    from torch.distributed.tensor import DTensor

    params = [param for group in optimizer.param_groups for param in group["params"]]  # torch's state indices
    result = dict(tensors)
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        param = params[int(key.split(".")[1])]
        if isinstance(param, DTensor) and value.dim() > 0:  # per-element state; a scalar step stays as it is
            result[key] = DTensor.from_local(
                value.to(param.device),
                param.device_mesh,
                param.placements,
                run_check=False,
                shape=param.shape,
                stride=param.stride(),
            )
    return result
