"""The tiled search core against a direct computation: top-k on arrays, memory maps and row
subsets; thresholded pairs whatever the tile size; the optional faiss path (with a stand-in)."""

from __future__ import annotations

import importlib.machinery
import itertools
import sys
import types

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dinossl.errors import DinoError
from dinossl.eval.search import (
    RowSubset,
    TooManyPairs,
    choose_backend,
    nearest_neighbours,
    pairs_above,
    pairs_tile_bytes,
)


def clustered(n: int = 60, d: int = 16, seed: int = 0) -> np.ndarray:
    """Rows in loose clusters of 3, so some pairs are close and most are not."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 3, d))
    return (np.repeat(centres, 3, axis=0) + 0.25 * rng.normal(size=(n, d))).astype(np.float32)


def direct_pairs(rows: np.ndarray, threshold: float) -> dict[tuple[int, int], float]:
    """Every pair i < j above the threshold, by the definition, in float64."""
    unit = rows.astype(np.float64) / np.linalg.norm(rows.astype(np.float64), axis=1, keepdims=True)
    sims = unit @ unit.T
    return {(i, j): sims[i, j] for i, j in itertools.combinations(range(len(rows)), 2) if sims[i, j] > threshold}


@pytest.mark.parametrize("tile", [1, 4, 7, 60, 1000])
def test_pairs_above_match_the_definition_whatever_the_tile(tile):
    rows = clustered()
    expected = direct_pairs(rows, 0.8)
    # No pair within 1e-4 of the threshold, so float32 rounding cannot decide membership.
    assert all(abs(v - 0.8) > 1e-4 for v in direct_pairs(rows, -1).values())
    found = pairs_above(rows, 0.8, tile=tile)
    assert 10 < len(found) < 200
    assert set(zip(found.first.tolist(), found.second.tolist())) == set(expected)
    assert (found.first < found.second).all()
    np.testing.assert_allclose(found.similarity, [expected[p] for p in zip(found.first.tolist(), found.second.tolist())],
                               atol=1e-5)
    assert (np.diff(found.similarity) <= 0).all()  # strongest first


def test_pairs_above_on_a_memory_map_and_a_row_subset(tmp_path):
    rows = clustered()
    stored = np.lib.format.open_memmap(tmp_path / "rows.npy", mode="w+", dtype=np.float16, shape=rows.shape)
    stored[:] = rows
    stored.flush()
    reopened = np.load(tmp_path / "rows.npy", mmap_mode="r")
    as_half = rows.astype(np.float16).astype(np.float32)
    found = pairs_above(reopened, 0.8, tile=8)
    assert set(zip(found.first.tolist(), found.second.tolist())) == set(direct_pairs(as_half, 0.8))
    keep = np.arange(0, 60, 2)
    subset = pairs_above(RowSubset(reopened, keep), 0.8, tile=5)
    assert set(zip(subset.first.tolist(), subset.second.tolist())) == set(direct_pairs(as_half[keep], 0.8))


def test_pairs_above_is_strict_and_bounded():
    rows = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert len(pairs_above(rows, 0.999999)) == 1  # the identical rows (similarity 1)
    assert len(pairs_above(rows, 1.0)) == 0  # strictly above
    many = clustered()
    with pytest.raises(TooManyPairs, match="more than 5 pairs"):
        pairs_above(many, 0.0, tile=8, max_pairs=5)


def test_pairs_above_applies_the_transform_before_comparing():
    rows = np.array([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1]], dtype=np.float32)
    assert len(pairs_above(rows, 0.9)) == 1  # rows 0 and 1 nearly parallel
    found = pairs_above(rows, 0.9, transform=lambda x: x * torch.tensor([0.0, 1.0]))  # keep the 2nd coordinate
    assert set(zip(found.first.tolist(), found.second.tolist())) == {(0, 2)}


def test_top_k_on_arrays_memory_maps_and_subsets_equals_the_tensor_search(tmp_path):
    bank, queries = clustered(60), clustered(9, seed=1)
    ref_sims, ref_idx = nearest_neighbours(torch.from_numpy(bank), torch.from_numpy(queries), 5, query_chunk=4,
                                           bank_chunk=7)
    sims, idx = nearest_neighbours(bank, queries, 5, query_chunk=2, bank_chunk=11)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(sims, ref_sims)
    keep = np.arange(10, 60)
    sub_sims, sub_idx = nearest_neighbours(RowSubset(bank, keep), queries, 3, bank_chunk=9)
    unit = F.normalize(torch.from_numpy(bank[keep]), dim=1)
    direct = F.normalize(torch.from_numpy(queries), dim=1) @ unit.T
    torch.testing.assert_close(sub_sims, direct.sort(dim=1, descending=True).values[:, :3])
    assert sub_idx.max() < len(keep)


def test_tile_bytes_formula():
    # 4096 x 4096 similarities (4 bytes) + two masks (1 byte each) + two 4096 x 384 float32 tiles
    # + one tile read (float16) and converted (float32).
    assert pairs_tile_bytes(384, 4096) == 4096 * 4096 * 6 + 2 * 4096 * 384 * 4 + 4096 * 384 * 6
    assert pairs_tile_bytes(384, 4096) / 2**20 == pytest.approx(117, abs=0.5)


def test_backends_without_faiss(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss fails
    monkeypatch.setattr("dinossl.eval.search.faiss_available", lambda: False)
    assert choose_backend("auto") == "torch"
    with pytest.raises(DinoError, match="needs faiss"):
        choose_backend("faiss")
    with pytest.raises(DinoError, match="backend must be"):
        choose_backend("annoy")


class _FlatIP:
    """Stand-in for faiss.IndexFlatIP with faiss's documented results: search -> (D, I);
    range_search -> (lims, D, I) of the entries with inner product above the radius."""

    def __init__(self, d: int) -> None:
        self.rows = np.empty((0, d), dtype=np.float32)

    def add(self, x: np.ndarray) -> None:
        assert x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
        self.rows = np.concatenate([self.rows, x])

    def search(self, q: np.ndarray, k: int):
        sims = q @ self.rows.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, order, axis=1), order

    def range_search(self, q: np.ndarray, radius: float):
        sims = q @ self.rows.T
        hits = [np.flatnonzero(row > radius) for row in sims]
        lims = np.concatenate([[0], np.cumsum([len(h) for h in hits])])
        ids = np.concatenate(hits) if hits else np.empty(0, dtype=np.int64)
        dist = np.concatenate([row[h] for row, h in zip(sims, hits)]) if hits else np.empty(0, dtype=np.float32)
        return lims, dist, ids


def test_faiss_backend_gives_the_torch_results(monkeypatch):
    fake = types.ModuleType("faiss")
    fake.IndexFlatIP = _FlatIP
    fake.__spec__ = importlib.machinery.ModuleSpec("faiss", None)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    assert choose_backend("auto") == "faiss"
    rows = clustered()
    torch_pairs = pairs_above(rows, 0.8, tile=7, backend="torch")
    faiss_pairs = pairs_above(rows, 0.8, tile=7, backend="faiss")
    assert np.array_equal(faiss_pairs.first, torch_pairs.first) and np.array_equal(faiss_pairs.second, torch_pairs.second)
    np.testing.assert_allclose(faiss_pairs.similarity, torch_pairs.similarity, atol=1e-5)
    sims, idx = nearest_neighbours(rows, rows[:5], 4, backend="faiss", bank_chunk=13)
    ref_sims, ref_idx = nearest_neighbours(rows, rows[:5], 4)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(sims, ref_sims)
    with pytest.raises(TooManyPairs):
        pairs_above(rows, 0.0, tile=7, max_pairs=3, backend="faiss")
