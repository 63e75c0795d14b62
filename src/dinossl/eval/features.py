"""Frozen-backbone feature extraction for the evaluations.

One pass of a frozen backbone (eval mode, no gradient) over an image source with a
deterministic transform. Under torchrun each process takes a contiguous slice of the source
and the features are gathered, in dataset order, on every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset

from dinossl.data.images import ImageSource
from dinossl.errors import DinoError
from dinossl.inference import LoadedBackbone, TransformedImages, image_loader
from dinossl.models.linear_probe import probe_features
from dinossl.runtime.distributed import DistContext

@dataclass(frozen=True)
class FeatureSpec:
    """Which backbone outputs form the feature vector.

    ``n_last_blocks=1, avgpool=False``: the backbone's own output (ViT: CLS token after the
    final norm; ResNet: pooled features). Otherwise (ViT only): the CLS tokens of the last
    ``n_last_blocks`` blocks (each through the final norm), concatenated, followed by the mean
    of the last block's patch tokens when ``avgpool``.
    """

    n_last_blocks: int = 1
    avgpool: bool = False

    @property
    def uses_blocks(self) -> bool:
        return self.n_last_blocks > 1 or self.avgpool

    def check(self, backbone: nn.Module) -> None:
        """Raise a DinoError when the backbone cannot give these features."""
        if self.n_last_blocks < 1:
            raise DinoError(f"n_last_blocks must be at least 1, got {self.n_last_blocks}")
        if not self.uses_blocks:
            return
        blocks = getattr(backbone, "blocks", None)
        if blocks is None or not hasattr(backbone, "intermediate_layers"):
            raise DinoError(f"{type(backbone).__name__} has no transformer blocks: use n_last_blocks=1 without avgpool")
        if self.n_last_blocks > len(blocks):
            raise DinoError(f"n_last_blocks={self.n_last_blocks} but the backbone has {len(blocks)} blocks")

    def __call__(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) features."""
        return probe_features(backbone, images, self.n_last_blocks, self.avgpool)


@torch.no_grad()
def feature_dim(backbone: nn.Module, spec: FeatureSpec, crop: int, device: torch.device | str = "cpu") -> int:
    """D of the features ``spec`` gives for (crop x crop) images (one dummy forward)."""
    was_training = backbone.training
    try:
        return int(spec(backbone.eval(), torch.zeros(1, 3, crop, crop, device=device)).shape[1])
    finally:
        backbone.train(was_training)


def shard_indices(num_items: int, rank: int, world_size: int) -> np.ndarray:
    """This process's contiguous slice of range(num_items) (sizes differ by at most one)."""
    return np.array_split(np.arange(num_items), world_size)[rank]


def _comm_device(ctx: DistContext) -> torch.device:
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(local: torch.Tensor, ctx: DistContext, block_rows: int = 16384) -> torch.Tensor:
    """Concatenate every process's (n_r, ...) rows in rank order, on every process (on CPU).

    Rows may differ in number between processes; transfers go ``block_rows`` rows at a time so
    the communication buffer stays small whatever the total.
    """
    if not ctx.distributed:
        return local.cpu()
    device = _comm_device(ctx)
    count = torch.tensor([local.shape[0]], dtype=torch.long, device=device)
    counts = [torch.zeros_like(count) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    pieces: list[list[torch.Tensor]] = [[] for _ in range(ctx.world_size)]
    for start in range(0, max(counts), block_rows):
        rows = min(block_rows, max(counts) - start)
        buffer = torch.zeros((rows, *local.shape[1:]), dtype=local.dtype, device=device)
        mine = local[start:start + rows]
        buffer[: mine.shape[0]] = mine.to(device)
        received = [torch.empty_like(buffer) for _ in range(ctx.world_size)]
        dist.all_gather(received, buffer)
        for rank, tensor in enumerate(received):
            valid = max(0, min(rows, counts[rank] - start))
            if valid:
                pieces[rank].append(tensor[:valid].cpu())
    flat = [piece for rank_pieces in pieces for piece in rank_pieces]
    return torch.cat(flat) if flat else local.new_empty((0, *local.shape[1:])).cpu()


def _gather_shards(
    features: list[torch.Tensor], labels: list[torch.Tensor], indices: list[torch.Tensor], ctx: DistContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """All processes' features (N, D) and (label, index) pairs (N, 2); a process whose slice
    held no readable image contributes nothing."""
    dim = torch.tensor([features[0].shape[1] if features else 0], dtype=torch.long, device=_comm_device(ctx))
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)
    if int(dim.item()) == 0:
        raise DinoError("no readable images to extract features from")
    if features:
        local_features = torch.cat(features)
        local_meta = torch.stack([torch.cat(labels), torch.cat(indices)], 1)
    else:
        local_features = torch.empty(0, int(dim.item()))
        local_meta = torch.empty(0, 2, dtype=torch.long)
    return gather_rows(local_features, ctx), gather_rows(local_meta, ctx)


@torch.no_grad()
def extract_features(
    backbone: nn.Module | LoadedBackbone,
    source: ImageSource,
    transform: Callable,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    spec: FeatureSpec = FeatureSpec(),
    ctx: Optional[DistContext] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every readable image, in the source's order.

    Args:
        backbone: a module already on ``device`` (put in eval mode for the pass, restored after),
            or a :class:`~dinossl.inference.LoadedBackbone` (its device and precision; ``device`` ignored).
        spec: which outputs form the features (default: the backbone's output).
        ctx: when distributed, each process extracts its contiguous slice and every process
            receives all features (collective: all processes must call this together).

    Returns:
        features (N, D) float32 and labels (N,) on the CPU; N counts readable images.
    """
    loaded = backbone if isinstance(backbone, LoadedBackbone) else LoadedBackbone(backbone, torch.device(device))
    spec.check(loaded.module)
    distributed = ctx is not None and ctx.distributed
    dataset: Dataset = TransformedImages(source, transform)
    if distributed:
        dataset = Subset(dataset, shard_indices(len(source), ctx.rank, ctx.world_size).tolist())
    found = loaded.collect(image_loader(dataset, batch_size, num_workers, loaded.device), spec, label="features")
    features = [found.values] if len(found.indices) else []
    labels, indices = [found.labels], [found.indices]
    if not distributed:
        if not features:
            raise DinoError("no readable images to extract features from")
        local_features, local_meta = features[0], torch.stack([labels[0], indices[0]], 1)
    else:
        local_features, local_meta = _gather_shards(features, labels, indices, ctx)
    order = local_meta[:, 1].argsort()
    return local_features[order], local_meta[order, 0]
