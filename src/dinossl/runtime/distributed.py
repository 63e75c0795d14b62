"""Process-group setup for torchrun (one or many nodes) and for a plain single process, the
collectives the package uses, and how a lost peer is recognised."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
from torch import distributed as dist

from dinossl.errors import DinoError
from dinossl.runtime.device import resolve_device


class PeerFailure(DinoError):
    """Another process of the run died, hung or never arrived."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_process_group: bool = False  # this module created the group, so it destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment carries torchrun's (or an equivalent launcher's) variables."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_distributed(device_preference: str = "auto", timeout_s: int = 600) -> DistContext:
    """Join the process group when launched by torchrun, else run as a single process.

    NCCL on GPUs, gloo on CPUs. ``timeout_s`` bounds both the rendezvous (a peer that never
    arrives) and every collective (a peer that died), so no rank hangs for ever.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(0, 1, 0, resolve_device(device_preference, 0))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owns = not dist.is_initialized()
    if owns:
        try:
            dist.init_process_group(
                backend=backend,
                timeout=datetime.timedelta(seconds=timeout_s),
                device_id=device if device.type == "cuda" else None,
            )
        except Exception as exc:  # rendezvous timeout or refused connection
            raise PeerFailure(
                f"rank {rank}: could not join the process group of {world_size} processes at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s} s "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
    return DistContext(rank, world_size, local_rank, device, owns_process_group=owns)


def local_context(device_preference: str = "auto") -> DistContext:
    """This process alone, even when launched by torchrun (e.g. the processes of ``dino study
    --parallel``, each training its own variants): rank 0 of 1, on the device of its
    ``LOCAL_RANK``. It must not be used while a process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        raise RuntimeError("a process that trains alone must not be part of a process group")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistContext(0, 1, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum, max or mean) when distributed; identity otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "mean": dist.ReduceOp.SUM}[op]
        dist.all_reduce(tensor, op=reduce_op)
        if op == "mean":
            tensor /= dist.get_world_size()
    return tensor


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def synchronize_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """BatchNorm -> SyncBatchNorm on CUDA devices (batch statistics over all processes).

    SyncBatchNorm has no CPU implementation, so on CPUs (gloo) the module is returned as is
    and each process normalises with its own batch statistics.
    """
    if device.type != "cuda":
        return module
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)


def is_peer_failure(exc: BaseException) -> bool:
    """Whether an exception raised inside a collective means another process died or hung."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "peer"))
