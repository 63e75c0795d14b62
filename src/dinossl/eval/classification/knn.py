"""Weighted k-NN classification on L2-normalised features (DINO's protocol).

Each of the k nearest bank features (cosine similarity) votes for its label with weight
exp(similarity / T). All requested k are answered from one search of the largest k, done by
:func:`dinossl.eval.search.nearest_neighbours` in (query chunk x bank chunk) tiles, so memory
stays bounded whatever the bank size (about query_chunk x bank_chunk floats beyond the bank).

Results do not depend on the chunk sizes: neighbours are ordered by decreasing similarity,
equal similarities by increasing bank index; equal class scores favour the lower class index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from dinossl.errors import DinoError
from dinossl.eval.search import nearest_neighbours
from dinossl.eval.validation import require_positive

__all__ = ["KnnSettings", "class_scores", "knn_classify", "knn_hits", "knn_predictions", "nearest_neighbours",
           "paired_bootstrap_interval", "ranked_classes"]


def class_scores(
    similarities: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, temperature: float = 0.07
) -> torch.Tensor:
    """(M, k) similarities and labels -> (M, C) sums of exp(sim / T) per class."""
    weights = (similarities / temperature).exp()
    scores = torch.zeros(similarities.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, neighbour_labels, weights)


def ranked_classes(scores: torch.Tensor) -> torch.Tensor:
    """(M, C) scores -> (M, C) class indices, best first; equal scores favour the lower index."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def _check_ks(ks: Iterable[int]) -> list[int]:
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive, got {ks}")
    return ks


@torch.no_grad()
def knn_hits(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    ks: Iterable[int],
    num_classes: int,
    temperature: float = 0.07,
    query_chunk: int = 1024,
    bank_chunk: int = 65536,
) -> dict[int, tuple[int, int]]:
    """Number of queries whose label is the top-1 / among the top-5 classes, for each k.

    A k larger than the bank is reduced to the bank size (reported under the asked k). An
    empty query set gives zero hits (so shards of a query set can be summed).
    """
    ks = _check_ks(ks)
    if bank.shape[0] == 0:
        raise ValueError("k-NN needs a non-empty bank")
    if queries.shape[0] == 0:
        return {k: (0, 0) for k in ks}
    bank_labels = bank_labels.to(bank.device).long()
    query_labels = query_labels.to(bank.device).long()
    k_max = min(ks[-1], bank.shape[0])
    sims, idx = nearest_neighbours(bank, queries, k_max, query_chunk=query_chunk, bank_chunk=bank_chunk)
    neighbour_labels = bank_labels[idx]
    hits: dict[int, tuple[int, int]] = {}
    for k in ks:
        kk = min(k, k_max)
        ranked = ranked_classes(class_scores(sims[:, :kk], neighbour_labels[:, :kk], num_classes, temperature))
        correct = ranked[:, : min(5, num_classes)] == query_labels[:, None]
        hits[k] = (int(correct[:, 0].sum().item()), int(correct.any(dim=1).sum().item()))
    return hits


@torch.no_grad()
def knn_classify(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    ks: Iterable[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    query_chunk: int = 1024,
    bank_chunk: int = 65536,
) -> dict[int, dict[str, float]]:
    """Top-1 and top-5 accuracy (percent) of the weighted k-NN classifier for each k.

    Args:
        bank: (N, d) features with labels (N,); queries: (M, d) with labels (M,).
        num_classes: defaults to 1 + the largest label seen.

    A k larger than the bank is reduced to the bank size (reported under the asked k).
    """
    if bank.shape[0] == 0 or queries.shape[0] == 0:
        raise ValueError("k-NN needs a non-empty bank and at least one query")
    if num_classes is None:
        num_classes = int(max(bank_labels.max().item(), query_labels.max().item())) + 1
    hits = knn_hits(bank, bank_labels, queries, query_labels, ks, num_classes, temperature,
                    query_chunk=query_chunk, bank_chunk=bank_chunk)
    total = queries.shape[0]
    return {k: {"top1": 100.0 * top1 / total, "top5": 100.0 * top5 / total} for k, (top1, top5) in hits.items()}


@torch.no_grad()
def knn_predictions(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int, num_classes: int,
    temperature: float = 0.07,
) -> torch.Tensor:
    """(M,) top-1 class of each query under the weighted k-NN vote (k reduced to the bank size)."""
    if bank.shape[0] == 0 or queries.shape[0] == 0:
        raise ValueError("k-NN needs a non-empty bank and at least one query")
    kk = min(k, bank.shape[0])
    sims, idx = nearest_neighbours(bank, queries, kk)
    neighbour_labels = bank_labels.to(bank.device).long()[idx]
    return ranked_classes(class_scores(sims, neighbour_labels, num_classes, temperature))[:, 0]


def paired_bootstrap_interval(
    correct_a: torch.Tensor, correct_b: torch.Tensor, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval (percentage points) of accuracy(a) - accuracy(b), both (M,)
    bool over the same queries, resampling the queries with replacement."""
    if correct_a.shape != correct_b.shape or correct_a.ndim != 1 or len(correct_a) == 0:
        raise ValueError("need two equally long, non-empty 1-D vectors of per-query outcomes")
    difference = correct_a.float().cpu() - correct_b.float().cpu()
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, len(difference), (resamples, len(difference)), generator=generator)
    gains = 100.0 * difference[draws].mean(dim=1)
    tail = (1.0 - level) / 2
    low, high = torch.quantile(gains, torch.tensor([tail, 1.0 - tail])).tolist()
    return low, high


@dataclass(frozen=True)
class KnnSettings:
    """The k-NN protocol's settings (DINO's defaults); chunks bound the similarity tiles."""

    ks: tuple[int, ...] = (10, 20, 100, 200)
    temperature: float = 0.07
    query_chunk: int = 1024
    bank_chunk: int = 65536

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise DinoError(f"k values must be positive, got {list(self.ks)}")
        require_positive(self, "temperature", "query_chunk", "bank_chunk")
