"""The run folder: its files, written atomically, and read back safely.

A run folder holds ``model.safetensors`` (label names and recipe hash in its metadata),
``config.json`` (timm's layout: architecture, num_classes, num_features, label_names,
pretrained_cfg with mean/std/input size, plus a ``zoo`` section with the resolved recipe),
``recipe.toml``, ``metrics.jsonl``, ``results.json`` and a model card ``README.md``.
Every file is written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .errors import ZooError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
RECIPE = "recipe.toml"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
MODEL_CARD = "README.md"
PLOTS = ("loss.png", "accuracy.png", "lr.png", "confusion_matrix.png")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ZooError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a read-only or vanished folder: the user's to fix
            raise ZooError(f"cannot write {path}: {exc.strerror}; {path.name} was left as it was") from exc
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def write_weights(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    atomic_write(path, save_safetensors(tensors, metadata=metadata))


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    if not folder.is_dir():
        raise ZooError(f"run folder not found: {folder}")
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ZooError(f"{folder} is not a zoo run folder: it has no {CONFIG}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ZooError(f"{path} is corrupted: {exc}") from None
    if not isinstance(config, dict) or "zoo" not in config or "label_names" not in config:
        raise ZooError(f"{path} was not written by zoo (no 'zoo' section or label_names)")
    return config


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``folder/model.safetensors``; only safetensors are ever loaded."""
    path = folder / WEIGHTS
    try:
        return load_safetensors(path.read_bytes())
    except FileNotFoundError:
        raise ZooError(f"{folder} has no {WEIGHTS}") from None
    except (SafetensorError, ValueError) as exc:
        raise ZooError(f"{path} is corrupted: {exc}") from None


def is_run_folder(folder: Path) -> bool:
    return (folder / WEIGHTS).exists() or (folder / RESULTS).exists()


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or half-written by an older crash."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_results(folder: Path) -> dict[str, Any] | None:
    return read_json(folder / RESULTS)
