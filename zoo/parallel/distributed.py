"""Data-parallel training through torch.distributed, launched by torchrun.

zoo starts no processes and runs no rendezvous of its own: ``torchrun`` (or ``zoo run
--nproc N``, which hands over to ``torch.distributed.run``) starts one process per rank and
sets RANK, WORLD_SIZE and LOCAL_RANK; this module joins that process group (nccl on CUDA,
gloo on the CPU) and offers the few collectives the runner needs. Outside torchrun every
function here is a no-op for a single process.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .. import _output
from .._lifetime import end_with_parent
from ..errors import ZooError

T = TypeVar("T")

LAUNCHER_PID = "ZOO_LAUNCHER_PID"  # the process that starts the ranks: they end when it does


def launched() -> bool:
    """Whether this process is one rank of a torchrun launch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def end_with_launcher() -> None:
    """A rank started by torchrun ends when its launcher does.

    torchrun starts each rank in a session of its own, so killing the launcher (``kill -9``, a
    job's time limit, the OOM killer) does not reach the ranks: they would train on as orphans,
    holding their GPUs and the run folder's claim, until a collective fails. The rank gets SIGKILL
    when its launcher dies (``_lifetime.end_with_parent``: the kernel on Linux, elsewhere a thread).
    The checkpoints are made for a kill at any moment, so ``--resume`` can follow at once.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # not a rank of torchrun
        return
    end_with_parent(int(os.environ.get(LAUNCHER_PID) or os.getppid()), signal.SIGKILL)


class RankLeft(ZooError):
    """Another rank of the job ended (killed, or stopped by its own error) while this one needed it."""


# What gloo's TCP transport says when the rank at the other end of a collective is gone.
_PEER_GONE = ("closed by peer", "reset by peer", "Broken pipe")


def rank_left(exc: BaseException) -> RankLeft | None:
    """``exc`` as a RankLeft when it is a collective failing because another rank is gone, else None
    (a plugin's own broken pipe is its error, not a rank leaving: only gloo's or the backend's count)."""
    if not launched() or not isinstance(exc, RuntimeError) or isinstance(exc, ZooError):
        return None
    message = str(exc)
    from_the_backend = isinstance(exc, dist.DistError) or "gloo/transport" in message
    if not (from_the_backend and any(sign in message for sign in _PEER_GONE)):
        return None
    return RankLeft(
        f"rank {rank()} stopped: another rank of this job ended (killed, or stopped by an error) while this one "
        "waited for it; resume the run with as many processes (--resume)"
    )


# This node's ranks, as their own group (None with one rank per node, or uneven nodes).
_node_group: dist.ProcessGroup | None = None


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once); returns this rank's device."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":  # device_id: NCCL binds this rank to its GPU at once
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        _join_node_group()
    return device


def _join_node_group() -> None:
    """torchrun numbers a node's ranks consecutively: with as many on every node, each node's
    ranks form a group of their own (``from_node_main`` sends through it)."""
    global _node_group
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if per_node > 1 and world_size() % per_node == 0:
        _node_group, _ = dist.new_subgroups(group_size=per_node)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def log(text: str, event: str = "message", **fields: Any) -> None:
    """A message for the reader (``zoo._output``), on rank 0 only."""
    if is_main():
        _output.message(text, event, **fields)


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all ranks (the tensor itself for one process)."""
    return _all_reduce(tensor, dist.ReduceOp.SUM) if world_size() > 1 else tensor


def max_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    return _all_reduce(tensor, dist.ReduceOp.MAX) if world_size() > 1 else tensor


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    reduced = tensor.to(_collective_device(), copy=True)
    dist.all_reduce(reduced, op=op)
    return reduced.to(tensor.device)


def from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank: a decision that rank 0 alone makes (it alone reads the run folders)."""
    if world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gathered(value: object) -> list[object]:
    """Every rank's ``value``, in rank order, on every rank."""
    if world_size() == 1:
        return [value]
    gathered: list[object] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def gather_at_main(value: object) -> list[object] | None:
    """Every rank's ``value``, in rank order, on rank 0 alone (None elsewhere): each rank's part of a
    checkpoint meets the others only where they are written."""
    if world_size() == 1:
        return [value]
    gathered: list[object] | None = [None] * world_size() if is_main() else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def decided_by_main(decide: Callable[[], T]) -> T:
    """``decide()`` run on rank 0 alone (it alone may see the run folders), its answer on every rank.

    A ZooError there is raised on every rank, so that no rank goes on to a collective the others skip.
    """
    if world_size() == 1:
        return decide()
    value, error = from_main(_answer(decide))  # type: ignore[misc]
    if error is not None:
        raise ZooError(error)
    return value  # type: ignore[return-value]


def _answer(decide: Callable[[], T]) -> tuple[T | None, str | None]:
    """(``decide()``, None) on rank 0, or (None, the message) when it raised a ZooError; (None, None) elsewhere."""
    if not is_main():
        return None, None
    try:
        return decide(), None
    except ZooError as exc:
        return None, str(exc)


def agreed(work: Callable[[], T]) -> T:
    """``work()`` on every rank; if it fails with a ZooError on any rank, every rank raises one.

    Each node reads its own data and folders; a mistake seen on one node alone must stop all of
    them here, not leave the others waiting in a collective.
    """
    if world_size() == 1:
        return work()
    try:
        value, error = work(), None
    except ZooError as exc:
        value, error = None, str(exc)
    errors = all_gathered(error)
    failed = [(rank, message) for rank, message in enumerate(errors) if message is not None]
    if failed:
        rank, message = failed[0]
        raise ZooError(message if error is not None else f"on rank {rank}: {message}")
    return value  # type: ignore[return-value]


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if world_size() > 1 else 0


@contextmanager
def node_main_first() -> Iterator[None]:
    """The block runs on each node's first rank, then on the others: one download per node."""
    if world_size() > 1 and local_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:  # even when it failed: the node's other ranks are waiting for it
        if world_size() > 1 and local_rank() == 0:
            dist.barrier()


def from_node_main(make: Callable[[], T]) -> T:
    """``make()`` on each node's first rank (one download, one folder scan per node), its result
    sent to the node's other ranks; a result that cannot be sent (it does not pickle) is made by
    each of them after the first. A ZooError there is raised on every rank of the node."""
    if world_size() == 1:
        return make()
    if _node_group is None:
        with node_main_first():
            return make()
    payload: tuple[bytes | None, str | None] = (None, None)
    if local_rank() == 0:
        try:
            made = make()
        except ZooError as exc:
            payload = (None, str(exc))
        else:
            with contextlib.suppress(pickle.PicklingError, TypeError, AttributeError):
                payload = (pickle.dumps(made), None)
    holder = [payload]
    dist.broadcast_object_list(holder, src=dist.get_global_rank(_node_group, 0), group=_node_group)
    sent, error = holder[0]
    if error is not None:
        raise ZooError(error)
    if local_rank() == 0:
        return made
    return pickle.loads(sent) if sent is not None else make()  # from this node's first rank


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a shard of FSDP's), without importing torch.distributed.tensor
    (a second of start-up): none exists before something, such as FSDP, has imported it."""
    imported = sys.modules.get("torch.distributed.tensor")
    return imported is not None and isinstance(tensor, imported.DTensor)


def ranks_agree(model: torch.nn.Module) -> bool:
    """Whether every rank holds the same weights and buffers (compared through per-tensor float64 sums)."""
    if world_size() == 1:
        return True
    # On NCCL the tensors of a collective must be on the GPU: gather there, compare there.
    # A sharded parameter (FSDP) is held once, by one rank: only what every rank holds is compared.
    replicated = [t for t in model.state_dict().values() if not is_dtensor(t)]
    if not replicated:
        return True
    fingerprint = torch.stack([t.detach().double().sum() for t in replicated])
    fingerprint = fingerprint.to(_collective_device())
    gathered = [torch.empty_like(fingerprint) for _ in range(world_size())]
    dist.all_gather(gathered, fingerprint)
    return all(torch.equal(fingerprint, other) for other in gathered)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    DDP keeps parameters in step, but each rank updates its BatchNorm statistics from its own
    share of the data; evaluation, checkpoints and the saved weights use rank 0's.
    """
    if world_size() == 1:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point() or buffer.dtype in (torch.int64, torch.int32):
            shared = buffer.to(_collective_device())
            dist.broadcast(shared, src=0)
            buffer.copy_(shared)


def sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its BatchNorm layers as SyncBatchNorm (train.sync_bn), each keeping its forward.

    torch's ``convert_sync_batchnorm`` makes every BatchNorm subclass a plain SyncBatchNorm and
    drops what its forward adds: timm's BatchNormAct2d (EfficientNet, RegNet, ...) would lose its
    activation. timm's conversion keeps it (SyncBatchNormAct); a BatchNorm subclass neither knows
    is refused rather than changed.
    """
    from timm.layers import BatchNormAct2d, convert_sync_batchnorm  # timm only on this path

    batchnorm = torch.nn.modules.batchnorm._BatchNorm
    for name, module in model.named_modules():
        kind = type(module)
        if (
            isinstance(module, batchnorm)
            and kind not in (BatchNormAct2d, torch.nn.SyncBatchNorm)
            and (kind.forward is not batchnorm.forward)
        ):
            raise ZooError(
                f"train.sync_bn: {name} is a {type(module).__name__}, a BatchNorm with a forward of its own that "
                "SyncBatchNorm would drop; leave sync_bn out"
            )
    return convert_sync_batchnorm(model)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def shard(order: torch.Tensor, pad: bool) -> torch.Tensor:
    """This rank's share of ``order``; ``pad`` repeats items so that every rank gets as many."""
    ranks = world_size()
    if ranks == 1:
        return order
    if pad and len(order) % ranks:
        order = torch.cat([order, order[: ranks - len(order) % ranks]])
    return order[rank() :: ranks]


def teardown() -> None:
    global _node_group
    _node_group = None
    if dist.is_initialized():
        dist.destroy_process_group()
