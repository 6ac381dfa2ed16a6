"""Weights as zoo writes and reads them: safetensors bytes, the same in every process."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .errors import ZooError


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """``tensors`` as a safetensors file whose bytes depend on the tensors and metadata alone.

    safetensors writes its metadata from a Rust HashMap, in an order that changes from process to
    process: the same weights would get another sha256 in every run (breaking "bit-identical" by
    hash, and pins). The header is written again with the metadata's keys sorted, padded with
    spaces to 8 bytes as the format allows; the tensors' bytes are left as they are.
    """
    data = save_safetensors(tensors, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


def tensors_of(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors bytes ``data``, read from ``path``; a ZooError naming it if damaged."""
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError) as exc:
        raise ZooError(f"{path} is corrupted: {exc}") from None
