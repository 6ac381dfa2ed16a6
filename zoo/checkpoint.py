"""Checkpoints: everything a run needs to continue bit-identically after a crash or a kill.

A checkpoint is a folder ``RUN/checkpoints/step-NNNNNNNN/`` (``RunFolder.checkpoint_root``) with ``state.safetensors`` (model,
optimiser and RNG tensors) and ``state.json`` (the rest). It is written under a temporary
name and renamed into place, so the newest complete checkpoint is always whole.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from . import artifacts
from .errors import ZooError

TENSORS = "state.safetensors"
STATE = "state.json"


def save(
    root: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int, best: int | None = None
) -> Path:
    """Write a checkpoint into ``root`` (a run folder's checkpoints/) atomically; delete all but the
    newest ``keep`` and the one of step ``best`` (the weights a run keeps come from it)."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:08d}"
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}."))
    try:
        cpu = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
        artifacts.atomic_write(staging / TENSORS, save_safetensors(cpu))
        artifacts.write_json(staging / STATE, state)
        if target.exists():  # the same step saved again (an epoch's end after a mid-epoch save)
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in all_checkpoints(root)[:-keep]:
        if best is None or old.name != f"step-{best:08d}":
            shutil.rmtree(old)
    return target


def all_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints in ``root``, oldest first."""
    return sorted(p for p in root.glob("step-*") if (p / STATE).is_file()) if root.is_dir() else []


# What state.json must hold, and of which type, for a resume to use it.
STATE_TYPES: dict[str, type] = {
    "step": int,
    "epoch": int,
    "position": int,
    "seen": int,
    "world_size": int,
    "applied_stages": list,
    "history": list,
    "optimizer": dict,
    "rng": dict,
}


def read_state(path: Path) -> dict[str, Any]:
    """The checkpoint's state.json, checked; a one-line ZooError when it is damaged."""
    try:
        state = json.loads(artifacts.read_file(path / STATE) or b"null")
    except (ValueError, RecursionError) as exc:
        raise ZooError(f"checkpoint {path} is unreadable ({exc}); remove it to resume from the one before") from None
    for key, expected in STATE_TYPES.items():
        value = state.get(key) if isinstance(state, dict) else None
        if not isinstance(value, expected) or isinstance(value, bool) or (expected is int and value < 0):
            raise ZooError(f"checkpoint {path} is damaged ({STATE}: {key}); remove it to resume from the one before")
    return state


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = read_state(path)
    try:
        return load_safetensors(artifacts.read_file(path / TENSORS, limit=None) or b""), state
    except (SafetensorError, ValueError) as exc:
        raise ZooError(f"checkpoint {path} is unreadable ({exc}); remove it to resume from the one before") from None


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimiser's state split into tensors (for safetensors) and the rest (for JSON)."""
    saved = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    others: dict[str, dict[str, Any]] = {}
    for index, values in saved["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                others.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": saved["param_groups"], "state": others}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], saved: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {int(index): dict(values) for index, values in saved["state"].items()}
    for key, tensor in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"rng.cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())}
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return tensors, {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
    }


def set_rng_state(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[key] for key in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
