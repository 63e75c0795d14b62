"""PCA whitening: identity covariance on the learning set, chunked = one pass, singular sets."""

from __future__ import annotations

import pytest
import torch

from dinossl.errors import DataError
from dinossl.eval.retrieval.whitening import learn_whitening


def _correlated(n: int, d: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return (torch.randn(n, d, generator=generator, dtype=torch.float64) @ mixing + 3.0)


def test_whitened_learning_set_has_identity_covariance():
    rows = _correlated(500, 8)
    whitening = learn_whitening([rows.float()])
    projected = (rows - whitening.mean.double()) @ whitening.projection.double()
    covariance = projected.T @ projected / len(rows)
    torch.testing.assert_close(covariance, torch.eye(8, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(whitening.mean.double(), rows.mean(dim=0), atol=1e-4, rtol=0)
    applied = whitening(rows.float())
    torch.testing.assert_close(applied.norm(dim=1), torch.ones(500))
    torch.testing.assert_close(applied, torch.nn.functional.normalize(projected, dim=1).float(), atol=1e-4, rtol=0)
    assert whitening.floored == 0 and whitening.samples == 500


def test_chunks_give_the_same_whitening():
    rows = _correlated(90, 6).float()
    one = learn_whitening([rows])
    chunked = learn_whitening([rows[:7], rows[7:50], rows[50:]])
    torch.testing.assert_close(chunked.mean, one.mean)
    probe = _correlated(5, 6, seed=1).float()
    torch.testing.assert_close(chunked(probe), one(probe), atol=1e-4, rtol=0)


def test_fewer_samples_than_dimensions_still_give_finite_descriptors():
    rows = _correlated(5, 16).float()
    whitening = learn_whitening([rows])
    assert whitening.floored >= 16 - 4  # rank of 5 centred points is at most 4
    assert torch.isfinite(whitening(_correlated(3, 16, seed=2).float())).all()
    with pytest.raises(DataError, match="at least 2"):
        learn_whitening([rows[:1]])
