"""Weighted k-NN against a direct (pure Python) computation: weights, ties, top-5, chunks."""

from __future__ import annotations

import math

import pytest
import torch

from dinossl.errors import DinoError
from dinossl.eval.classification.knn import (
    KnnSettings,
    class_scores,
    knn_classify,
    knn_hits,
    knn_predictions,
    nearest_neighbours,
    paired_bootstrap_interval,
)




def direct_knn(bank, bank_labels, queries, query_labels, k, temperature, num_classes):
    """Top-1/top-5 percent by the definition, one query at a time, in float64."""
    bank, queries = bank.double().tolist(), queries.double().tolist()
    top1 = top5 = 0
    for query, label in zip(queries, query_labels.tolist()):
        qn = math.sqrt(sum(v * v for v in query))
        sims = [sum(a * b for a, b in zip(query, row)) / (qn * math.sqrt(sum(v * v for v in row))) for row in bank]
        neighbours = sorted(range(len(bank)), key=lambda i: (-sims[i], i))[: min(k, len(bank))]
        scores = [0.0] * num_classes
        for i in neighbours:
            scores[int(bank_labels[i])] += math.exp(sims[i] / temperature)
        ranked = sorted(range(num_classes), key=lambda c: (-scores[c], c))
        top1 += ranked[0] == label
        top5 += label in ranked[:5]
    return 100.0 * top1 / len(queries), 100.0 * top5 / len(queries)


def unit(angle_cos: float) -> list[float]:
    """A 2-D unit vector whose cosine with (1, 0) is ``angle_cos``."""
    return [angle_cos, math.sqrt(1 - angle_cos**2)]


def test_votes_are_weighted_by_exp_similarity_over_temperature():
    # Neighbours of (1, 0): class 0 at cos 0.9, class 1 at cos 0.8 and 0.7.
    bank = torch.tensor([unit(0.9), unit(0.8), unit(0.7)])
    labels = torch.tensor([0, 1, 1])
    query, query_label = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    sims, idx = nearest_neighbours(bank, query, 3)
    assert idx.tolist() == [[0, 1, 2]]
    torch.testing.assert_close(sims, torch.tensor([[0.9, 0.8, 0.7]]))
    scores = class_scores(sims, labels[idx], num_classes=2, temperature=0.07)
    expected = [math.exp(0.9 / 0.07), math.exp(0.8 / 0.07) + math.exp(0.7 / 0.07)]
    torch.testing.assert_close(scores[0], torch.tensor(expected), rtol=1e-5, atol=0)
    # At T=0.07 the single closer neighbour outweighs the two others; at T=1 it does not.
    assert knn_classify(bank, labels, query, query_label, ks=(3,), temperature=0.07)[3]["top1"] == 0.0
    assert knn_classify(bank, labels, query, query_label, ks=(3,), temperature=1.0)[3]["top1"] == 100.0
    # k=1 only sees the nearest neighbour.
    assert knn_classify(bank, labels, query, query_label, ks=(1,))[1]["top1"] == 0.0


@pytest.mark.parametrize("bank_chunk", [1, 2, 3, 4, 5, 100])
def test_tied_neighbours_keep_the_lower_bank_index_whatever_the_chunks(bank_chunk):
    d = [0.0, 1.0, 1.0]
    bank = torch.tensor([[1.0, 0.0, 0.0], d, d, d, d])
    labels = torch.tensor([0, 3, 2, 1, 0])
    sims, idx = nearest_neighbours(bank, torch.tensor([d]), 2, query_chunk=1, bank_chunk=bank_chunk)
    assert idx.tolist() == [[1, 2]]
    # k=1: the tie among four equal neighbours goes to bank index 1 (label 3).
    result = knn_classify(bank, labels, torch.tensor([d]), torch.tensor([3]), ks=(1,), bank_chunk=bank_chunk)
    assert result[1]["top1"] == 100.0


def test_equal_class_scores_favour_the_lower_class_index():
    bank = torch.tensor([[1.0, 1.0], [1.0, -1.0]])  # same similarity to (1, 0)
    labels = torch.tensor([3, 1])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_classify(bank, labels, query, torch.tensor([1]), ks=(2,), num_classes=4)[2]["top1"] == 100.0
    assert knn_classify(bank, labels, query, torch.tensor([3]), ks=(2,), num_classes=4)[2]["top1"] == 0.0


def test_top5_counts_the_label_among_the_five_best_classes():
    # Seven neighbours of (1, 0), one per class, class c at decreasing similarity: rank of c = c.
    bank = torch.tensor([unit(0.95 - 0.05 * c) for c in range(7)])
    labels = torch.arange(7)
    query = torch.tensor([[1.0, 0.0]])
    for label, top1, top5 in ((0, 100.0, 100.0), (4, 0.0, 100.0), (5, 0.0, 0.0), (6, 0.0, 0.0)):
        result = knn_classify(bank, labels, query, torch.tensor([label]), ks=(7,))[7]
        assert (result["top1"], result["top5"]) == (top1, top5), label


@pytest.mark.parametrize("query_chunk,bank_chunk", [(1, 1), (4, 7), (5, 16), (1000, 1000)])
def test_random_features_match_the_direct_computation(query_chunk, bank_chunk):
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(53, 6, generator=generator)
    bank_labels = torch.randint(0, 8, (53,), generator=generator)
    queries = torch.randn(17, 6, generator=generator) * 3  # unnormalised on purpose
    query_labels = torch.randint(0, 8, (17,), generator=generator)
    ks = (1, 5, 10, 53, 100)  # 100 > bank size: reduced to 53
    result = knn_classify(bank, bank_labels, queries, query_labels, ks=ks, temperature=0.07, num_classes=8,
                          query_chunk=query_chunk, bank_chunk=bank_chunk)
    for k in ks:
        top1, top5 = direct_knn(bank, bank_labels, queries, query_labels, k, 0.07, 8)
        assert result[k]["top1"] == pytest.approx(top1)
        assert result[k]["top5"] == pytest.approx(top5)
    assert result[100] == result[53]


def test_hits_of_query_shards_add_up_to_the_whole():
    generator = torch.Generator().manual_seed(1)
    bank, bank_labels = torch.randn(40, 5, generator=generator), torch.randint(0, 4, (40,), generator=generator)
    queries, query_labels = torch.randn(11, 5, generator=generator), torch.randint(0, 4, (11,), generator=generator)
    whole = knn_hits(bank, bank_labels, queries, query_labels, (3, 20), num_classes=4)
    parts = [knn_hits(bank, bank_labels, queries[s], query_labels[s], (3, 20), num_classes=4)
             for s in (slice(0, 6), slice(6, 11), slice(11, 11))]
    for k in (3, 20):
        assert tuple(map(sum, zip(*(p[k] for p in parts)))) == whole[k]


def test_bad_arguments_are_refused():
    bank, labels = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError):
        knn_classify(bank[:0], labels[:0], bank, labels)
    with pytest.raises(ValueError):
        knn_classify(bank, labels, bank, labels, ks=(0,))
    with pytest.raises(ValueError):
        nearest_neighbours(bank, bank, 5)
    with pytest.raises(DinoError):
        KnnSettings(ks=(10, -1))
    with pytest.raises(DinoError):
        KnnSettings(temperature=0.0)


def test_per_query_predictions_give_the_same_top1_as_the_classifier():
    generator = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(300, 16, generator=generator), torch.randn(120, 16, generator=generator)
    bank_labels, query_labels = torch.randint(0, 7, (300,), generator=generator), torch.randint(0, 7, (120,), generator=generator)
    predicted = knn_predictions(bank, bank_labels, queries, k=20, num_classes=7)
    top1 = knn_classify(bank, bank_labels, queries, query_labels, ks=(20,), num_classes=7)[20]["top1"]
    assert predicted.shape == (120,)
    assert 100.0 * (predicted == query_labels).float().mean().item() == pytest.approx(top1)


def test_paired_bootstrap_interval_brackets_the_gain():
    same = torch.rand(500, generator=torch.Generator().manual_seed(0)) < 0.3
    assert paired_bootstrap_interval(same, same) == (0.0, 0.0)
    assert paired_bootstrap_interval(torch.ones(50, dtype=torch.bool), torch.zeros(50, dtype=torch.bool)) == (100.0, 100.0)
    # a fixes 60 of b's 1,000 mistakes-or-not and breaks 20: true gain +4 points, SE about 0.8.
    b = torch.rand(1000, generator=torch.Generator().manual_seed(1)) < 0.3
    a = b.clone()
    a[:60], a[60:80] = True, False
    a[:60] |= b[:60]
    gain = 100.0 * (a.float().mean() - b.float().mean()).item()
    low, high = paired_bootstrap_interval(a, b)
    assert low < gain < high and 1.5 < high - low < 5.0
    with pytest.raises(ValueError):
        paired_bootstrap_interval(a, b[:10])
