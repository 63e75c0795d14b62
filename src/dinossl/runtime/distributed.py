"""Process-group setup for torchrun (one or many nodes) and for a plain single process, the
collectives the package uses, and how a lost peer is recognised.

How a lost peer shows: on gloo (CPUs) a collective with a dead or silent peer raises in Python
(connection closed, or ``timeout_s``), and the trainer turns that into one :class:`PeerFailure`
line. On NCCL (GPUs) the package keeps torch's default asynchronous error handling: collectives
do not block the host, and NCCL's watchdog ends the process (with its own message) when a
collective fails or exceeds ``timeout_s``; under torchrun a peer that dies ends the others at
once (torchrun stops every worker and names the failed rank). The package does not switch on
``TORCH_NCCL_BLOCKING_WAIT``, which would raise in Python instead but makes every collective's
``wait()`` block the host, a host sync at each gradient all-reduce; a user who sets it gets
the PeerFailure line on NCCL too. See docs/distributed.md.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import distributed as dist

from dinossl.errors import DinoError
from dinossl.runtime.device import make_current, resolve_device

log = logging.getLogger("dinossl")


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
    arrives) and every collective (a peer that died), so no rank hangs for ever. A CUDA device
    becomes the process's current device (also in a single process on ``cuda:N``).
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(0, 1, 0, make_current(resolve_device(device_preference, 0)))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = make_current(resolve_device(device_preference, local_rank))
    if device.type == "mps":
        raise DinoError("several processes on an Apple-silicon GPU (mps) are not supported: run one process "
                        "(without torchrun), or use --device cpu")
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
        if backend == "nccl" and rank == 0 and os.environ.get("TORCH_NCCL_BLOCKING_WAIT", "0") in ("", "0"):
            log.info(nccl_failure_note(timeout_s))
    return DistContext(rank, world_size, local_rank, device, owns_process_group=owns)


def nccl_failure_note(timeout_s: int) -> str:
    """What a run on NCCL does when a process dies or hangs (logged once at start)."""
    return (f"NCCL: if a process of the run dies or stops answering, the others end too (torchrun stops them, "
            f"or NCCL's watchdog after {timeout_s} s, with torch's own message); the last checkpoint stays "
            "usable and the same command resumes it (docs/distributed.md)")
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
    """Destroy the default process group if there is one (on every exit path of a command)."""
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


def gather_objects(value: Any) -> list[Any]:
    """Every process's ``value`` (small picklable data: RNG states, running sums), in rank
    order, on every process; ``[value]`` when not distributed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(values, value)
        return values
    return [value]


def raise_together(error: Optional[DinoError], ctx: DistContext, kind: type[DinoError] = DinoError) -> None:
    """Raise ``error``, decided on the main process, on every process (a collective when
    distributed): the others raise a ``kind``, marked so that only rank 0's message is printed."""
    if ctx.distributed:
        flag = all_reduce(torch.tensor([0 if error is None else 1], device=ctx.device), "max")
        if int(flag.item()) and error is None:
            error = kind("the main process stopped (rank 0 says why)")
            error.same_on_all_ranks = True
    if error is not None:
        raise error


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
