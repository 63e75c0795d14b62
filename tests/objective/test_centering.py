"""The teacher's target distribution: Sinkhorn-Knopp (rows sum to one, columns uniform; equal to
SwAV's probability-domain algorithm restated here; the same over 2 processes as over 1), no
centering, DINO's EMA center."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import distributed as dist

from dinossl.objective.centering import sinkhorn_knopp_log, teacher_log_probs


def swav_sinkhorn(scores: torch.Tensor, iterations: int) -> torch.Tensor:
    """SwAV's distributed_sinkhorn on one process, restated: Q = exp(scores)^T (K x B), then
    rows (prototypes) to 1/K and columns (samples) to 1/B in turn; returned as (B, K) with
    each sample summing to one."""
    q = torch.exp(scores.double()).t()
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def test_rows_sum_to_one_and_columns_are_uniform():
    torch.manual_seed(0)
    batch, prototypes = 64, 16
    scores = torch.randn(batch, prototypes)
    q = sinkhorn_knopp_log(scores, iterations=3).exp()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(batch), rtol=0, atol=1e-5)
    # Three alternations leave the columns close to N / K for moderate scores ...
    torch.testing.assert_close(q.sum(dim=0), torch.full((prototypes,), batch / prototypes), rtol=0.01, atol=0)
    # ... and many alternations reach it for sharp ones, where three do not.
    sharp = scores * 5
    assert not torch.allclose(sinkhorn_knopp_log(sharp, 3).exp().sum(dim=0), torch.full((prototypes,), 4.0),
                              rtol=0.05)
    q = sinkhorn_knopp_log(sharp, iterations=300).exp()
    torch.testing.assert_close(q.sum(dim=0), torch.full((prototypes,), batch / prototypes), rtol=1e-4, atol=0)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(batch), rtol=0, atol=1e-5)


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_equals_swav_probability_domain_algorithm(iterations):
    torch.manual_seed(1)
    scores = torch.randn(24, 10) * 3
    expected = swav_sinkhorn(scores, iterations).float()
    torch.testing.assert_close(sinkhorn_knopp_log(scores, iterations).exp(), expected, rtol=1e-5, atol=1e-7)


def test_log_domain_survives_scores_that_overflow_exp():
    scores = torch.tensor([[200.0, 0.0, -200.0], [0.0, 200.0, 0.0], [-200.0, 0.0, 200.0]])
    log_q = sinkhorn_knopp_log(scores, 3)
    assert torch.isfinite(log_q).all()
    torch.testing.assert_close(log_q.exp().sum(dim=1), torch.ones(3))


def test_no_centering_and_ema_centering():
    torch.manual_seed(2)
    logits, center = torch.randn(6, 5), torch.randn(1, 5)
    torch.testing.assert_close(teacher_log_probs(logits, 0.04, "none", center), F.log_softmax(logits / 0.04, dim=-1))
    torch.testing.assert_close(teacher_log_probs(logits, 0.04, "ema", center),
                               F.log_softmax((logits - center) / 0.04, dim=-1))
    torch.testing.assert_close(teacher_log_probs(logits, 0.04, "sinkhorn", center, 3),
                               sinkhorn_knopp_log(logits / 0.04, 3))
    with pytest.raises(ValueError):
        teacher_log_probs(logits, 0.04, "median", center)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _half_batch_worker(rank: int, port: int, scores: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        half = scores.shape[0] // 2
        out[rank] = sinkhorn_knopp_log(scores[rank * half:(rank + 1) * half], 3)
    finally:
        dist.destroy_process_group()


def test_two_processes_normalise_over_the_global_batch():
    torch.manual_seed(3)
    scores = torch.randn(16, 6) * 2
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_half_batch_worker, args=(_free_port(), scores, out), nprocs=2, join=True)
        halves = torch.cat([out[0], out[1]])
    torch.testing.assert_close(halves, sinkhorn_knopp_log(scores, 3), rtol=1e-5, atol=1e-6)
    # Per process alone the result would differ: the columns are balanced over both halves.
    assert not torch.allclose(sinkhorn_knopp_log(scores[:8], 3), halves[:8], atol=1e-3)
