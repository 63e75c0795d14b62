"""Average precision of rankings, as the retrieval benchmarks define it (not scikit-learn's).

* :func:`trapezoid_ap`: the area under the precision-recall curve by the trapezoid rule, from
  the 0-based ranks of the retrieved true positives. Between the i-th and (i+1)-th positive
  (rank r) the curve goes from precision i / r (1 at rank 0) to (i + 1) / (r + 1), over a
  recall step of 1 / (number of positives). Positives never retrieved add nothing. This is the
  INRIA Holidays evaluation's ``score_ap_from_ranks_1``, used for Copydays
  (:func:`holidays_ap`), and the revisited Oxford/Paris ``compute_ap``.
* :func:`revisited_scores`: the revisited Oxford/Paris protocol (Radenovic et al. 2018): the
  junk images of each query are taken out of its ranking before scoring; AP by the trapezoid
  rule; precision at k counts positives among the first min(k, rank of the last positive)
  results and divides by that number; queries with no positive are left out of the means.
  Medium: positives easy + hard, junk = junk; Hard: positives hard, junk = junk + easy.

Scores are returned as fractions in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

PRECISION_KS = (1, 5, 10)


def trapezoid_ap(positive_ranks: Sequence[int], n_positives: int) -> float:
    """AP from the increasing 0-based ranks of the retrieved true positives (see the module)."""
    ranks = [int(r) for r in positive_ranks]
    if n_positives < 1:
        raise ValueError(f"a query needs at least one positive, got {n_positives}")
    if len(ranks) > n_positives:
        raise ValueError(f"{len(ranks)} positive ranks for {n_positives} positives")
    if any(r < 0 for r in ranks) or any(b <= a for a, b in zip(ranks, ranks[1:])):
        raise ValueError(f"positive ranks must be increasing and non-negative, got {ranks}")
    step = 1.0 / n_positives
    ap = 0.0
    for found, rank in enumerate(ranks):
        left = 1.0 if rank == 0 else found / rank
        right = (found + 1) / (rank + 1)
        ap += (left + right) * step / 2.0
    return ap


def holidays_ap(ranking: Sequence[int], positives: Sequence[int]) -> float:
    """Copydays / Holidays AP of one query: ``ranking`` lists database indices best first (it may
    be cut short); ``positives`` are the query's true matches."""
    wanted = {int(p) for p in positives}
    ranks = [rank for rank, index in enumerate(ranking) if int(index) in wanted]
    return trapezoid_ap(ranks, len(wanted))


def positive_ranks_without_junk(ranking: Sequence[int], positives: Sequence[int], junk: Sequence[int]) -> np.ndarray:
    """0-based ranks of the positives in ``ranking`` once the junk entries before each of them
    are taken out. ``ranking`` must hold every positive."""
    ranking = np.asarray(ranking, dtype=np.int64)
    is_positive = np.isin(ranking, np.asarray(positives, dtype=np.int64))
    if int(is_positive.sum()) != len({int(p) for p in positives}):
        raise ValueError("the ranking does not hold every positive")
    is_junk = np.isin(ranking, np.asarray(junk, dtype=np.int64))
    junk_before = np.cumsum(is_junk) - is_junk  # junk strictly before each position
    positions = np.flatnonzero(is_positive)
    return positions - junk_before[positions]


def revisited_precision_at(ranks: np.ndarray, k: int) -> float:
    """The benchmark's precision at k from 0-based positive ranks (junk removed): positives among
    the first min(k, rank of the last positive + 1) results, divided by that number."""
    one_based = np.asarray(ranks) + 1
    cut = min(int(one_based.max()), k)
    return float((one_based <= cut).sum()) / cut


@dataclass(frozen=True)
class QueryScore:
    """One query's AP and precisions at k (None when the query has no positive)."""

    ap: Optional[float]
    precision: dict[int, Optional[float]]


def query_score(ranking: Sequence[int], positives: Sequence[int], junk: Sequence[int],
                ks: Sequence[int] = PRECISION_KS) -> QueryScore:
    """AP and mP@k terms of one query of the revisited protocol."""
    if len(positives) == 0:
        return QueryScore(None, {k: None for k in ks})
    ranks = positive_ranks_without_junk(ranking, positives, junk)
    ap = trapezoid_ap(ranks, len({int(p) for p in positives}))
    return QueryScore(ap, {k: revisited_precision_at(ranks, k) for k in ks})


SETTINGS = ("medium", "hard")


def setting_truth(setting: str, easy: Sequence[int], hard: Sequence[int],
                  junk: Sequence[int]) -> tuple[list[int], list[int]]:
    """(positives, junk) of one query under the Medium or Hard setting."""
    if setting == "medium":
        return [*easy, *hard], list(junk)
    if setting == "hard":
        return list(hard), [*junk, *easy]
    raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")


def _mean(values: list[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def revisited_scores(rankings: np.ndarray, truths: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]],
                     ks: Sequence[int] = PRECISION_KS) -> dict[str, dict]:
    """Medium and Hard scores of a revisited benchmark.

    Args:
        rankings: (Q, N) database indices, best first, one full ranking per query.
        truths: per query, its (easy, hard, junk) database indices.

    Returns:
        {"medium"|"hard": {"mAP", "mP@k": {k: value}, "ap": [per query], "precision_at": {k: [per query]},
        "queries_scored"}}; None marks a query without positives (left out of the means).
    """
    if len(rankings) != len(truths):
        raise ValueError(f"{len(rankings)} rankings for {len(truths)} queries")
    out: dict[str, dict] = {}
    for setting in SETTINGS:
        scores = [query_score(ranking, *setting_truth(setting, *truth), ks=ks)
                  for ranking, truth in zip(rankings, truths)]
        aps = [s.ap for s in scores]
        precision = {k: [s.precision[k] for s in scores] for k in ks}
        out[setting] = {
            "mAP": _mean(aps),
            "mP@k": {k: _mean(values) for k, values in precision.items()},
            "ap": aps,
            "precision_at": precision,
            "queries_scored": sum(a is not None for a in aps),
        }
    return out
