"""Checkpoints: everything a run needs to continue bit-identically after a crash or a kill.

A checkpoint is a folder ``RUN/checkpoints/step-NNNNNNNN/`` (``RunFolder.checkpoint_root``) with ``state.safetensors`` (model,
optimiser and RNG tensors) and ``state.json`` (the rest): rank 0's part. Under torchrun every other
rank R adds its own part, ``rank-RRRRR.safetensors``: its RNG states and partial sums, and under
FSDP its shards of the weights and the optimiser state; its JSON state, its rank and the world size
ride in the file's header. It is written under a temporary name and renamed into place, so the
newest complete checkpoint is always whole.

Why not ``torch.distributed.checkpoint``'s own files: its loader unpickles (the ``.metadata`` file
with ``pickle.load``, each tensor with ``torch.load``), and zoo never unpickles a file. Each rank's
part is safetensors instead; no collective carries a tensor (the parts travel, if at all, as bytes).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .. import _files
from .._safetensors import safetensors_bytes
from ..errors import ZooError
from ..parallel import distributed
from ..runs.folder import CHECKPOINT_STATE as STATE
from ..runs.folder import all_checkpoints

TENSORS = "state.safetensors"
# What every rank of a replicated (DDP) run restores from rank 0's part; the rest is each rank's own.
REPLICATED = ("model.", "ema.", "optim.")

Part = tuple[dict[str, torch.Tensor], dict[str, Any]]  # a rank's tensors and JSON state


def rank_file(rank: int) -> str:
    """The file of rank ``rank``'s own part of a checkpoint (ranks other than 0)."""
    return f"rank-{rank:05d}.safetensors"


def save(
    root: Path,
    step: int,
    shared: Part,
    own: Part,
    keep: int,
    best: int | None = None,
    *,
    each_rank_writes: bool = False,
) -> None:
    """Write a checkpoint into ``root`` (a run folder's checkpoints/) atomically; delete all but the
    newest ``keep`` and the one of step ``best`` (the weights a run keeps come from it). A collective.

    ``shared`` (used on rank 0 only) is what every rank holds alike, ``own`` this rank's own part.
    Rank 0 writes the folder; each other rank's part reaches it as bytes, or with ``each_rank_writes``
    (FSDP: rank 0 never holds the other ranks' shards) is written by that rank into the staging
    folder, which every rank must see (a filesystem they share).
    """
    if not each_rank_writes:
        parts = distributed.gather_at_main(None if distributed.is_main() else _serialised(own))
        if parts is not None:
            _write(root, step, shared, own, dict(enumerate(parts[1:], start=1)), keep, best)
        return
    staging = distributed.decided_by_main(lambda: _staging(root, step))
    try:
        distributed.agreed(lambda: _write_own_part(staging, own))
    except ZooError:
        if distributed.is_main():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    distributed.decided_by_main(lambda: _write(root, step, shared, own, {}, keep, best, staging))


def _serialised(own: Part) -> bytes:
    """A rank's own part as the bytes of its file: its JSON state, rank and world size in the header."""
    tensors, state = own
    metadata = {
        "rank": str(distributed.rank()),
        "world_size": str(distributed.world_size()),
        "state": json.dumps(state, allow_nan=False),
    }
    return safetensors_bytes(_on_cpu(tensors), metadata)


def _on_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}


def _staging(root: Path, step: int) -> Path:
    """A new hidden folder in ``root`` that becomes checkpoint ``step`` once whole."""
    if root.is_symlink() or (root.exists() and not root.is_dir()):  # writes would land where it points
        raise ZooError(f"{root} is not a folder of the run (a link or a file): remove it, zoo keeps checkpoints there")
    return _files.staging_folder(root / f"step-{step:08d}")


def _write_own_part(staging: Path, own: Part) -> None:
    """This rank's part into rank 0's staging folder (rank 0's own goes into state.*, by ``_write``)."""
    rank = distributed.rank()
    if rank == 0:
        return
    if not staging.is_dir():  # atomic_write would create it: a folder on this node alone, never renamed
        raise ZooError(
            f"this rank does not see the run's checkpoints/ ({staging.parent}): under train.strategy = fsdp each "
            "rank writes its own shards there, so the run folder (output.dir) must be on a filesystem every node shares"
        )
    _files.atomic_write(staging / rank_file(rank), _serialised(own))


def _write(
    root: Path,
    step: int,
    shared: Part,
    own: Part,
    parts: dict[int, bytes],
    keep: int,
    best: int | None,
    staging: Path | None = None,
) -> None:
    """Rank 0: its part and the other ranks' ``parts`` (those not already in ``staging``) into the
    staging folder, which then replaces checkpoint ``step`` whole; then the old ones go."""
    target = root / f"step-{step:08d}"
    staging = staging or _staging(root, step)
    try:
        for rank, part in parts.items():
            _files.atomic_write(staging / rank_file(rank), part)
        missing = [rank for rank in range(1, distributed.world_size()) if not (staging / rank_file(rank)).is_file()]
        if missing:
            raise ZooError(f"rank {missing[0]}'s part of checkpoint {target} is not in {staging}")
        _files.atomic_write(staging / TENSORS, save_safetensors(_on_cpu(shared[0] | own[0])))
        _files.write_json(staging / STATE, shared[1] | own[1])
        _files.replace_folder(staging, target)  # also the same step saved again (an epoch's end after mid-epoch)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _remove_abandoned_staging(root)
    for old in all_checkpoints(root)[:-keep]:
        if best is None or old.name != f"step-{best:08d}":
            shutil.rmtree(old)


def _remove_abandoned_staging(root: Path) -> None:
    """The staging folders of saves that a kill cut short (the ``finally`` above never ran). None is another
    save's: the process saving holds the run folder's claim, and its own save's staging is renamed by now."""
    for abandoned in root.glob(".step-*.*"):
        if abandoned.is_dir() and not abandoned.is_symlink():  # a link or file by that name is not zoo's: left
            shutil.rmtree(abandoned)


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
        state = json.loads(_files.read_file(path / STATE) or b"null")
    except (ValueError, RecursionError) as exc:
        raise ZooError(f"checkpoint {path} is unreadable ({exc}); remove it to resume from the one before") from None
    _check_types(state, STATE_TYPES, path, STATE)
    return state


def _check_types(state: Any, types: dict[str, type], path: Path, file: str) -> None:
    for key, expected in types.items():
        value = state.get(key) if isinstance(state, dict) else None
        if not isinstance(value, expected) or isinstance(value, bool) or (expected is int and value < 0):
            raise ZooError(f"checkpoint {path} is damaged ({file}: {key}); remove it to resume from the one before")


def load(path: Path) -> Part:
    """Rank 0's part of the checkpoint at ``path``: the whole checkpoint of a single process."""
    state = read_state(path)
    return _rank0_tensors(path), state


def _rank0_tensors(path: Path) -> dict[str, torch.Tensor]:
    return _tensors(path, _files.read_file(path / TENSORS, limit=None) or b"", TENSORS)


def _tensors(path: Path, data: bytes, file: str) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError) as exc:
        raise ZooError(
            f"checkpoint {path} is unreadable ({file}: {exc}); remove it to resume from the one before"
        ) from None


def load_own(path: Path, each_rank_reads: bool = False) -> Part:
    """What this rank restores from the checkpoint at ``path`` (a collective): refused on every rank,
    before any step, unless each rank's part is there, written by that rank at this world size.

    Rank 0 alone reads the folder and sends each rank the shared tensors and its own part, as
    bytes: nodes need not share a filesystem. With ``each_rank_reads`` (FSDP, whose shards rank 0
    never holds) each rank reads its own part, from a folder that they share.
    """
    rank = distributed.rank()
    if each_rank_reads:
        state = distributed.decided_by_main(lambda: _checked_state(path))
        if rank == 0:
            return distributed.agreed(lambda: _rank0_tensors(path)), state
        tensors, own_state = distributed.agreed(lambda: _part(path, rank, _read_part(path, rank)))
        return tensors, state | own_state
    whole, state, parts = distributed.decided_by_main(lambda: _read_whole(path))
    tensors = load_safetensors(whole)
    if rank == 0:
        return tensors, state
    own_tensors, own_state = _part(path, rank, parts[rank - 1])
    replicated = {name: tensor for name, tensor in tensors.items() if name.startswith(REPLICATED)}
    return replicated | own_tensors, state | own_state


def _read_whole(path: Path) -> tuple[bytes, dict[str, Any], list[bytes]]:
    """Rank 0: the checkpoint's files as it sends them, each checked, so that a damaged one stops every rank."""
    state = _checked_state(path)
    whole = _files.read_file(path / TENSORS, limit=None) or b""
    _tensors(path, whole, TENSORS)
    parts = [_read_part(path, rank) for rank in range(1, distributed.world_size())]
    for rank, part in enumerate(parts, start=1):
        _part(path, rank, part)
    return whole, state, parts


def _checked_state(path: Path) -> dict[str, Any]:
    """Rank 0: the checkpoint's state.json, refused unless written at this world size, with no other run's parts."""
    state = read_state(path)
    ranks = distributed.world_size()
    if state["world_size"] != ranks:
        raise ZooError(f"{path} was written by {state['world_size']} processes; resume it with as many")
    foreign = sorted({part.name for part in path.glob("rank-*")} - {rank_file(rank) for rank in range(1, ranks)})
    if foreign:
        raise ZooError(
            f"checkpoint {path} holds {foreign[0]}, which no rank of {ranks} processes wrote; "
            "remove the checkpoint to resume from the one before"
        )
    return state


def _read_part(path: Path, rank: int) -> bytes:
    data = _files.read_file(path / rank_file(rank), limit=None)
    if data is None:
        raise ZooError(
            f"checkpoint {path} lacks rank {rank}'s state ({rank_file(rank)}); remove it to resume from the one before"
        )
    return data


# What a rank's own JSON state must hold (its header's "state").
PART_TYPES: dict[str, type] = {"rng": dict, "seen": int}


def _part(path: Path, rank: int, data: bytes) -> Part:
    """Rank ``rank``'s own part from its file's bytes, refused unless that rank wrote it at this world size."""
    file = rank_file(rank)
    tensors = _tensors(path, data, file)
    try:  # the header, already checked by safetensors: 8 bytes of length, then JSON
        metadata = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
        written_by = (int(metadata["rank"]), int(metadata["world_size"]))
        state = json.loads(metadata["state"])
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise ZooError(
            f"checkpoint {path} is damaged ({file}: {exc}); remove it to resume from the one before"
        ) from None
    if written_by != (rank, distributed.world_size()):
        raise ZooError(
            f"checkpoint {path} holds in {file} the state of rank {written_by[0]} of {written_by[1]} processes, "
            f"not of rank {rank} of {distributed.world_size()}; remove it to resume from the one before"
        )
    _check_types(state, PART_TYPES, path, file)
    return tensors, state


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
    # The kernel is the one this optimiser was built with, not the checkpoint's: a checkpoint written
    # foreach (zoo before its CPU kernels were fused) goes on fused, which the grad scaler was told
    # when the optimiser was built, and which the groups a later stage adds take too.
    kernels = {kernel: optimizer.defaults[kernel] for kernel in ("fused", "foreach") if kernel in optimizer.defaults}
    groups = [{**group, **kernels} for group in saved["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    # Saved contiguous, a parameter's moments must lie in memory as it does (channels-last): torch's
    # fused kernels read the two element by element in memory order, and mix up their values otherwise.
    for param, values in optimizer.state.items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                values[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


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
