"""The benchmarks' AP and precision at k against values worked out by hand on small rankings."""

from __future__ import annotations

import pytest

from dinossl.eval.retrieval.ranking_metrics import (
    holidays_ap,
    positive_ranks_without_junk,
    query_score,
    revisited_precision_at,
    revisited_scores,
    trapezoid_ap,
)


def test_trapezoid_ap_by_hand():
    # Positives at ranks 0 and 2 of 2: trapezoids (1 + 1)/2 * 1/2 and (1/2 + 2/3)/2 * 1/2.
    assert trapezoid_ap([0, 2], 2) == pytest.approx(0.5 + 7 / 24)
    # One of two positives found, at rank 1: (0/1 + 1/2)/2 * 1/2; the other adds nothing.
    assert trapezoid_ap([1], 2) == pytest.approx(1 / 8)
    assert trapezoid_ap([0, 1, 2], 3) == 1.0
    assert trapezoid_ap([], 3) == 0.0
    # Unlike the step-wise (scikit-learn style) AP: a positive at rank 1 of 1 gives (0 + 1/2)/2 = 1/4, not 1/2.
    assert trapezoid_ap([1], 1) == pytest.approx(0.25)


@pytest.mark.parametrize("ranks, count", [([2, 1], 2), ([-1], 1), ([0, 1, 2], 2), ([0], 0)])
def test_trapezoid_ap_refuses_impossible_ranks(ranks, count):
    with pytest.raises(ValueError):
        trapezoid_ap(ranks, count)


def test_junk_is_removed_from_the_ranking_before_scoring():
    # Ranking P1, J, N, P2 (database ids 10, 11, 12, 13): without the junk, P2 moves to rank 2.
    ranking, positives, junk = [10, 11, 12, 13], [10, 13], [11]
    assert positive_ranks_without_junk(ranking, positives, junk).tolist() == [0, 2]
    assert query_score(ranking, positives, junk).ap == pytest.approx(0.5 + 7 / 24)
    # Scored with the junk left in, the same ranking would give 0.5 + (1/3 + 2/4)/4.
    assert query_score(ranking, positives, []).ap == pytest.approx(0.5 + (1 / 3 + 2 / 4) / 4)
    # Junk after every positive changes nothing.
    assert query_score([10, 13, 11, 12], positives, junk).ap == 1.0


def test_precision_at_k_stops_at_the_last_positive():
    # Positives at 1-based positions 2 and 5 (junk removed).
    ranks = positive_ranks_without_junk([7, 1, 8, 9, 0, 4, 2], [1, 2], [8, 9]).tolist()
    assert ranks == [1, 4]
    assert revisited_precision_at(ranks, 1) == 0.0
    assert revisited_precision_at(ranks, 5) == pytest.approx(2 / 5)
    # At k = 10 the benchmark divides by min(10, 5) = 5, not by 10.
    assert revisited_precision_at(ranks, 10) == pytest.approx(2 / 5)


def test_medium_and_hard_settings_by_hand():
    # Query with easy {1}, hard {2}, junk {3}; ranking 3, 2, 0, 1, 4.
    rankings = [[3, 2, 0, 1, 4], [0, 1, 2, 3, 4]]
    truths = [([1], [2], [3]), ([0], [], [4])]
    scores = revisited_scores(rankings, truths)
    # Medium: positives {1, 2}, junk {3} -> ranks 0 and 2 -> 0.5 + 7/24.
    assert scores["medium"]["ap"][0] == pytest.approx(0.5 + 7 / 24)
    # Hard: positive {2}, junk {3, 1} -> rank 0 -> 1.
    assert scores["hard"]["ap"][0] == 1.0
    # The second query has no hard positive: left out of the Hard mean, counted in Medium.
    assert scores["hard"]["ap"][1] is None and scores["hard"]["queries_scored"] == 1
    assert scores["hard"]["mAP"] == 1.0 and scores["hard"]["mP@k"][1] == 1.0
    assert scores["medium"]["ap"][1] == 1.0
    assert scores["medium"]["mAP"] == pytest.approx((0.5 + 7 / 24 + 1.0) / 2)
    # Medium P@1 of query 0: first result (junk removed) is positive 2.
    assert scores["medium"]["precision_at"][1] == [1.0, 1.0]


def test_a_ranking_missing_a_positive_is_refused():
    with pytest.raises(ValueError, match="every positive"):
        query_score([0, 1], [0, 5], [])


def test_holidays_ap_from_ranks_of_true_positives():
    # Top-4 list 7, 3, 5, 9 for a query whose originals are 3 and 8 (8 not retrieved).
    assert holidays_ap([7, 3, 5, 9], [3, 8]) == pytest.approx((0 / 1 + 1 / 2) / 2 * 0.5)
    assert holidays_ap([3, 7], [3]) == 1.0
