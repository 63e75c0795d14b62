import numpy as np
import pytest

from dinossl.objective import cosine_schedule, teacher_temperature_schedule


def test_lr_schedule_warmup_then_cosine():
    epochs, iters, warmup = 10, 7, 2
    s = cosine_schedule(0.5, 1e-3, epochs, iters, warmup_epochs=warmup)
    assert len(s) == epochs * iters
    assert s[0] == 0.0
    warm = s[: warmup * iters]
    np.testing.assert_allclose(np.diff(warm), 0.5 / (warmup * iters))  # linear from 0
    assert s[warmup * iters] == pytest.approx(0.5)  # peak right after warm-up
    assert s[-1] == pytest.approx(1e-3)  # ends exactly at the final value
    assert np.all(np.diff(s[warmup * iters:]) <= 1e-12)  # cosine decreases
    mid = warmup * iters + (epochs - warmup) * iters // 2
    assert s[mid] == pytest.approx((0.5 + 1e-3) / 2, rel=0.05)


def test_increasing_cosine_for_weight_decay_and_momentum():
    wd = cosine_schedule(0.04, 0.4, 5, 3)
    assert wd[0] == pytest.approx(0.04) and wd[-1] == pytest.approx(0.4)
    assert np.all(np.diff(wd) >= 0)
    momentum = cosine_schedule(0.996, 1.0, 100, 20)
    assert momentum[0] == pytest.approx(0.996) and momentum[-1] == pytest.approx(1.0)


def test_warmup_longer_than_training_is_truncated():
    s = cosine_schedule(1.0, 0.0, 2, 5, warmup_epochs=4)
    assert len(s) == 10 and s[-1] < 1.0 and np.all(np.diff(s) > 0)


def test_teacher_temperature_warmup():
    t = teacher_temperature_schedule(0.04, 0.07, 30, 100)
    assert len(t) == 100
    assert t[0] == pytest.approx(0.04)
    assert t[29] == pytest.approx(0.07)
    np.testing.assert_allclose(np.diff(t[:30]), 0.03 / 29)
    assert np.all(t[30:] == 0.07)
    constant = teacher_temperature_schedule(0.04, 0.04, 0, 5)
    assert np.all(constant == 0.04) and len(constant) == 5
