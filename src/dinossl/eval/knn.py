"""Weighted k-NN classification on L2-normalised features (DINO's protocol).

Each of the k nearest bank features (cosine similarity) votes for its label with weight
exp(similarity / T). All requested k are answered from one search of the largest k; the
similarity matrix is computed in (query chunk x bank chunk) tiles, so memory stays bounded
whatever the bank size.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch.nn import functional as F


@torch.no_grad()
def nearest_neighbours(
    bank: torch.Tensor, queries: torch.Tensor, k: int, query_chunk: int = 1024, bank_chunk: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine similarities and bank indices for each query.

    Args:
        bank: (N, d) features; queries: (M, d) features (both L2-normalised here).
        k: number of neighbours, at most N.

    Returns:
        similarities (M, k) in decreasing order and indices (M, k) into the bank.
    """
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must be in [1, {bank.shape[0]}], got {k}")
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    all_sims, all_idx = [], []
    for q0 in range(0, queries.shape[0], query_chunk):
        q = queries[q0:q0 + query_chunk]
        best_sims = q.new_empty(q.shape[0], 0)
        best_idx = torch.empty(q.shape[0], 0, dtype=torch.long, device=q.device)
        for b0 in range(0, bank.shape[0], bank_chunk):
            sims = q @ bank[b0:b0 + bank_chunk].T
            top_sims, top_idx = sims.topk(min(k, sims.shape[1]), dim=1)
            merged_sims = torch.cat([best_sims, top_sims], dim=1)
            merged_idx = torch.cat([best_idx, top_idx + b0], dim=1)
            best_sims, order = merged_sims.topk(min(k, merged_sims.shape[1]), dim=1)
            best_idx = merged_idx.gather(1, order)
        all_sims.append(best_sims)
        all_idx.append(best_idx)
    return torch.cat(all_sims), torch.cat(all_idx)


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

    A k larger than the bank is reduced to the bank size (reported under the asked k).
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive, got {ks}")
    if bank.shape[0] == 0 or queries.shape[0] == 0:
        raise ValueError("k-NN needs a non-empty bank and at least one query")
    bank_labels = bank_labels.to(bank.device).long()
    query_labels = query_labels.to(queries.device).long()
    if num_classes is None:
        num_classes = int(max(bank_labels.max().item(), query_labels.max().item())) + 1
    k_max = min(ks[-1], bank.shape[0])
    sims, idx = nearest_neighbours(bank, queries, k_max, query_chunk=query_chunk, bank_chunk=bank_chunk)
    neighbour_labels = bank_labels[idx]
    results: dict[int, dict[str, float]] = {}
    for k in ks:
        kk = min(k, k_max)
        ranked = ranked_classes(class_scores(sims[:, :kk], neighbour_labels[:, :kk], num_classes, temperature))
        hits = ranked[:, : min(5, num_classes)] == query_labels[:, None]
        results[k] = {
            "top1": 100.0 * hits[:, 0].float().mean().item(),
            "top5": 100.0 * hits.any(dim=1).float().mean().item(),
        }
    return results
