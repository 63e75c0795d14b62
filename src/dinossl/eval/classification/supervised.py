"""Pieces shared by the supervised evaluations (linear probe, fine-tuning): loaders that
shard across processes, top-1/top-5 counting, and the per-epoch record."""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from dinossl.eval.features import shard_indices
from dinossl.inference import collate_indexed
from dinossl.runtime.distributed import DistContext, all_reduce
from dinossl.runtime.cores import cap_workers


def per_process_batch(global_batch: int, ctx: DistContext) -> int:
    """The global batch split evenly over processes (at least one image each)."""
    return max(1, global_batch // ctx.world_size)


class EpochShuffle(Sampler[int]):
    """A seeded random order of ``size`` items per epoch (``set_epoch``), the same whatever ran
    before: a resumed probe draws the order an uninterrupted one draws."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def training_loader(
    dataset: Dataset, global_batch: int, ctx: DistContext, seed: int, num_workers: int = 0,
    collate: Optional[Callable] = collate_indexed,
) -> DataLoader:
    """Shuffled (seeded; a new order each epoch via ``set_epoch`` on the sampler), this
    process's share under torchrun, incomplete last batch dropped when there is a full one.
    Workers start anew each epoch, seeded from the generator :func:`seed_epoch` sets."""
    batch = per_process_batch(global_batch, ctx)
    if ctx.distributed:
        sampler: Sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                              seed=seed)
    else:
        sampler = EpochShuffle(len(dataset), seed)
    return DataLoader(
        dataset, batch_size=batch, sampler=sampler, drop_last=len(dataset) >= batch * ctx.world_size,
        num_workers=cap_workers(num_workers), collate_fn=collate, pin_memory=ctx.device.type == "cuda",
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """The loader's order for ``epoch``."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch, numpy and Python's generators from (seed, epoch, rank): augmentation, Mixup,
    drop-path and the loader workers' seeds of an epoch then do not depend on earlier epochs."""
    value = (seed * 1_000_003 + epoch * 1009 + rank) % (2**32)
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def evaluation_loader(
    dataset: Dataset, batch_size: int, ctx: DistContext, num_workers: int = 0,
    collate: Optional[Callable] = collate_indexed,
) -> DataLoader:
    """In order, no padding: this process's contiguous slice under torchrun."""
    if ctx.distributed:
        dataset = Subset(dataset, shard_indices(len(dataset), ctx.rank, ctx.world_size).tolist())
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=cap_workers(num_workers),
                      collate_fn=collate, pin_memory=ctx.device.type == "cuda")


def topk_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, C) logits, (B,) labels -> [top-1 hits, top-5 hits, B] as a float64 tensor on the
    logits' device, computed there without a host sync (the count B is filled on the device,
    not copied from the host)."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    correct = top == labels[:, None]
    count = torch.full((), labels.shape[0], dtype=torch.long, device=correct.device)
    return torch.stack([correct[:, 0].sum(), correct.any(dim=1).sum(), count]).double()


@torch.no_grad()
def accuracy(
    predict: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, device: torch.device,
    ctx: Optional[DistContext] = None,
) -> dict[str, float]:
    """Top-1/top-5 (percent) of ``predict`` over (inputs, labels, ...) batches; summed over
    processes when ``ctx`` is distributed (each process giving its own share of batches)."""
    counts = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in batches:
        if batch is None:
            continue
        inputs, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        counts += topk_hits(predict(inputs), labels)
    if ctx is not None and ctx.distributed:
        all_reduce(counts, "sum")
    total = max(counts[2].item(), 1.0)
    return {"top1": 100.0 * counts[0].item() / total, "top5": 100.0 * counts[1].item() / total}


def summarise(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Last and best (highest top-1, earliest on ties) of the evaluated epochs."""
    evaluated = [entry for entry in history if "top1" in entry]
    best = max(evaluated, key=lambda entry: (entry["top1"], -entry["epoch"]))
    pick = ("epoch", "top1", "top5")
    return {"last": {k: evaluated[-1][k] for k in pick}, "best": {k: best[k] for k in pick}}
