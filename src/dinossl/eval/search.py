"""Cosine similarity search in tiles: the k nearest neighbours of queries, and every pair of
rows above a similarity threshold.

Both read their matrices tile by tile, so a matrix may be a torch tensor, a numpy array, a
memory-mapped array on disk or a :class:`RowSubset` of one. Each tile is converted to float32
on the compute device, optionally transformed (e.g. whitened) and L2-normalised there, so the
memory used beyond the inputs is bounded by the tile sizes, whatever the number of rows:

* :func:`nearest_neighbours`: about ``query_chunk x bank_chunk`` float32 similarities plus the
  two normalised tiles (``(query_chunk + bank_chunk) x d`` floats);
* :func:`pairs_above`: ``tile x tile`` similarities (4 bytes each) and two boolean masks of that
  size (1 byte each), two normalised ``tile x d`` float32 tiles and the copies of a tile being
  read, plus the pairs found (:func:`pairs_tile_bytes`).

Results do not depend on the tile sizes: neighbours are ordered by decreasing similarity,
equal similarities by increasing index; pairs by decreasing similarity, then by index.

faiss (the optional extra ``dinossl[faiss]``) may replace the torch tiles with ``backend="faiss"``
or ``"auto"`` (faiss when it is installed); it is never required. It holds every normalised
row as float32 in memory (``n x d x 4`` bytes) and breaks ties in its own order.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.nn import functional as F

from dinossl.errors import DinoError
from dinossl.optional import require

Transform = Callable[[torch.Tensor], torch.Tensor]
BACKENDS = ("auto", "torch", "faiss")


class TooManyPairs(DinoError):
    """More pairs above the threshold than the caller allows."""


class RowSubset:
    """The rows ``indices`` of ``matrix`` (tensor or array), read only when sliced."""

    def __init__(self, matrix: Any, indices: np.ndarray) -> None:
        self.matrix = matrix
        self.indices = np.asarray(indices, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.indices), int(self.matrix.shape[1]))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, rows: slice) -> Any:
        picked = self.indices[rows]
        if isinstance(self.matrix, torch.Tensor):
            return self.matrix[torch.from_numpy(picked).to(self.matrix.device)]
        return self.matrix[picked]


def faiss_available() -> bool:
    """Whether the optional faiss package can be imported."""
    return importlib.util.find_spec("faiss") is not None


def choose_backend(backend: str) -> str:
    """'torch' or 'faiss' for a requested backend ('auto': faiss when installed)."""
    if backend not in BACKENDS:
        raise DinoError(f"search backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss" and not faiss_available():
        raise DinoError("the faiss search backend needs faiss (pip install 'dinossl[faiss]' or faiss-cpu)")
    return backend


def _home_device(matrix: Any) -> torch.device:
    return matrix.device if isinstance(matrix, torch.Tensor) else torch.device("cpu")


def read_tile(matrix: Any, start: int, stop: int, device: torch.device,
              transform: Optional[Transform] = None) -> torch.Tensor:
    """Rows [start, stop) of ``matrix`` as (stop - start, d') float32 L2-normalised rows on
    ``device``, after ``transform`` when given. All-zero rows stay zero."""
    block = matrix[start:stop]
    if not isinstance(block, torch.Tensor):
        block = torch.from_numpy(np.require(block, requirements=["C", "W"]))  # copies read-only maps
    block = block.to(device=device, dtype=torch.float32)
    if transform is not None:
        block = transform(block)
    return F.normalize(block, dim=1)


def _top_k_lowest_index_on_ties(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, n) similarities -> top-k (values, column indices); ties at the k-th value keep the
    lowest columns. ``topk`` alone may pick any of the tied columns, so rows with such ties are
    redone with a stable sort (rare for real features)."""
    values, columns = sims.topk(k, dim=1)
    if k == sims.shape[1]:
        tied = torch.ones(sims.shape[0], dtype=torch.bool, device=sims.device)
    else:
        tied = (sims >= values[:, -1:]).sum(dim=1) > k
    if tied.any():
        rows = tied.nonzero().squeeze(1)
        order = torch.sort(sims[rows], dim=1, descending=True, stable=True).indices[:, :k]
        values[rows], columns[rows] = sims[rows].gather(1, order), order
    return values, columns


def _order_neighbours(sims: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k best of (M, m) candidates: decreasing similarity, then increasing index."""
    by_index = idx.argsort(dim=1)
    sims, idx = sims.gather(1, by_index), idx.gather(1, by_index)
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]
    return sims.gather(1, order), idx.gather(1, order)


@torch.no_grad()
def nearest_neighbours(
    bank: Any, queries: Any, k: int, query_chunk: int = 1024, bank_chunk: int = 65536,
    transform: Optional[Transform] = None, device: Optional[torch.device | str] = None, backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine similarities and bank indices for each query.

    Args:
        bank: (N, d) rows; queries: (M, d) rows (both L2-normalised here, tile by tile, after
            ``transform`` when given).
        k: number of neighbours, at most N.
        device: where the tiles are computed (default: the bank's device; CPU for arrays).

    Returns:
        similarities (M, k) in decreasing order and indices (M, k) into the bank (ties: lower
        index first; faiss: its own order), on ``device``.
    """
    n = int(bank.shape[0])
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if query_chunk < 1 or bank_chunk < 1:
        raise ValueError(f"chunk sizes must be positive, got {query_chunk} and {bank_chunk}")
    device = torch.device(device) if device is not None else _home_device(bank)
    if choose_backend(backend) == "faiss":
        return _faiss_neighbours(bank, queries, k, query_chunk, bank_chunk, transform, device)
    all_sims, all_idx = [], []
    for q0 in range(0, int(queries.shape[0]), query_chunk):
        q = read_tile(queries, q0, q0 + query_chunk, device, transform)
        best_sims = q.new_empty(q.shape[0], 0)
        best_idx = torch.empty(q.shape[0], 0, dtype=torch.long, device=device)
        for b0 in range(0, n, bank_chunk):
            sims = q @ read_tile(bank, b0, b0 + bank_chunk, device, transform).T
            top_sims, top_idx = _top_k_lowest_index_on_ties(sims, min(k, sims.shape[1]))
            best_sims, best_idx = _order_neighbours(
                torch.cat([best_sims, top_sims], dim=1), torch.cat([best_idx, top_idx + b0], dim=1), k
            )
        all_sims.append(best_sims)
        all_idx.append(best_idx)
    if not all_sims:
        return torch.empty(0, k, device=device), torch.empty(0, k, dtype=torch.long, device=device)
    return torch.cat(all_sims), torch.cat(all_idx)


@dataclass(frozen=True)
class Pairs:
    """Pairs of row indices (first < second) and their cosine similarity, strongest first."""

    first: np.ndarray  # (P,) int64
    second: np.ndarray  # (P,) int64
    similarity: np.ndarray  # (P,) float32

    def __len__(self) -> int:
        return len(self.first)


def _sorted_pairs(first: np.ndarray, second: np.ndarray, similarity: np.ndarray) -> Pairs:
    order = np.lexsort((second, first, -similarity.astype(np.float64)))
    return Pairs(first[order].astype(np.int64, copy=False), second[order].astype(np.int64, copy=False),
                 similarity[order].astype(np.float32, copy=False))


def _check_pair_count(found: int, max_pairs: Optional[int], threshold: float) -> None:
    if max_pairs is not None and found > max_pairs:
        raise TooManyPairs(f"more than {max_pairs} pairs have a cosine similarity above {threshold}; "
                           "raise the threshold (or the pair limit)")


@torch.no_grad()
def pairs_above(
    features: Any, threshold: float, tile: int = 4096, transform: Optional[Transform] = None,
    device: Optional[torch.device | str] = None, max_pairs: Optional[int] = None, backend: str = "torch",
) -> Pairs:
    """Every pair of rows (i < j) of ``features`` (N, d) whose cosine similarity is above
    ``threshold`` (strictly), found tile by tile: only the upper triangle of the N x N
    similarity matrix is computed, ``tile`` x ``tile`` entries at a time.

    Raises :class:`TooManyPairs` as soon as more than ``max_pairs`` pairs are found.
    """
    if tile < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    n = int(features.shape[0])
    device = torch.device(device) if device is not None else _home_device(features)
    if choose_backend(backend) == "faiss":
        return _faiss_pairs(features, threshold, tile, transform, max_pairs)
    firsts, seconds, sims_found = [], [], []
    found = 0
    for r0 in range(0, n, tile):
        rows = read_tile(features, r0, r0 + tile, device, transform)
        for c0 in range(r0, n, tile):
            cols = rows if c0 == r0 else read_tile(features, c0, c0 + tile, device, transform)
            sims = rows @ cols.T
            above = sims > threshold
            if c0 == r0:  # diagonal tile: keep j > i only
                above &= torch.ones_like(above).triu_(diagonal=1)
            i, j = above.nonzero(as_tuple=True)
            if len(i):
                firsts.append((i + r0).cpu().numpy())
                seconds.append((j + c0).cpu().numpy())
                sims_found.append(sims[i, j].cpu().numpy())
                found += len(i)
                _check_pair_count(found, max_pairs, threshold)
    if not firsts:
        empty = np.empty(0, dtype=np.int64)
        return Pairs(empty, empty.copy(), np.empty(0, dtype=np.float32))
    return _sorted_pairs(np.concatenate(firsts), np.concatenate(seconds), np.concatenate(sims_found))


def pairs_tile_bytes(dim: int, tile: int = 4096) -> int:
    """Bytes :func:`pairs_above` holds at once on the torch backend, beyond its inputs and the
    pairs it returns: the similarity tile (float32) with its comparison and triangle masks
    (bool), the normalised row and column tiles (float32), and the transient copies of a tile
    being read (its stored float16 rows, and float32 before normalisation)."""
    return tile * tile * (4 + 1 + 1) + 2 * tile * dim * 4 + tile * dim * (2 + 4)


# ---------------------------------------------------------------------------------------------
# faiss (optional)
# ---------------------------------------------------------------------------------------------


def _faiss_index(matrix: Any, chunk: int, transform: Optional[Transform]):
    faiss = require("faiss", "the faiss search backend")

    index = None
    for start in range(0, int(matrix.shape[0]), chunk):
        block = read_tile(matrix, start, start + chunk, torch.device("cpu"), transform).numpy()
        if index is None:
            index = faiss.IndexFlatIP(block.shape[1])
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    return index


def _faiss_neighbours(bank: Any, queries: Any, k: int, query_chunk: int, bank_chunk: int,
                      transform: Optional[Transform], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    index = _faiss_index(bank, bank_chunk, transform)
    all_sims, all_idx = [], []
    for q0 in range(0, int(queries.shape[0]), query_chunk):
        q = read_tile(queries, q0, q0 + query_chunk, torch.device("cpu"), transform).numpy()
        sims, idx = index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        all_sims.append(torch.from_numpy(np.asarray(sims, dtype=np.float32)))
        all_idx.append(torch.from_numpy(np.asarray(idx, dtype=np.int64)))
    if not all_sims:
        return torch.empty(0, k, device=device), torch.empty(0, k, dtype=torch.long, device=device)
    return torch.cat(all_sims).to(device), torch.cat(all_idx).to(device)


def _faiss_pairs(features: Any, threshold: float, tile: int, transform: Optional[Transform],
                 max_pairs: Optional[int]) -> Pairs:
    index = _faiss_index(features, tile, transform)
    firsts, seconds, sims_found = [], [], []
    found = 0
    for r0 in range(0, int(features.shape[0]), tile):
        rows = read_tile(features, r0, r0 + tile, torch.device("cpu"), transform).numpy()
        limits, sims, idx = index.range_search(np.ascontiguousarray(rows, dtype=np.float32), float(threshold))
        query = np.repeat(np.arange(r0, r0 + len(rows), dtype=np.int64), np.diff(np.asarray(limits)))
        idx = np.asarray(idx, dtype=np.int64)
        sims = np.asarray(sims, dtype=np.float32)
        keep = (idx > query) & (sims > threshold)
        if keep.any():
            firsts.append(query[keep])
            seconds.append(idx[keep])
            sims_found.append(sims[keep])
            found += int(keep.sum())
            _check_pair_count(found, max_pairs, threshold)
    if not firsts:
        empty = np.empty(0, dtype=np.int64)
        return Pairs(empty, empty.copy(), np.empty(0, dtype=np.float32))
    return _sorted_pairs(np.concatenate(firsts), np.concatenate(seconds), np.concatenate(sims_found))
