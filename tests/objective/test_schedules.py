"""The schedules are DINO's ``cosine_scheduler`` element for element.

Expected values are computed by hand from the definition: a warm-up of W points evenly spaced
from the start value to the base value, end point included, then
final + (base - final) / 2 * (1 + cos(pi * i / n)) for i = 0 .. n - 1 (n post-warm-up iterations).
"""

import math

import numpy as np
import pytest

from dinossl.config import LossConfig, OptimConfig
from dinossl.objective import build_schedules, cosine_schedule, teacher_temperature_schedule


def _by_hand(base, final, epochs, iters, warmup_epochs=0, start=0.0):
    """The definition, one Python float at a time."""
    warmup = warmup_epochs * iters
    n = epochs * iters - warmup
    ramp = [start + (base - start) * k / (warmup - 1) for k in range(warmup)] if warmup > 1 else [base] * warmup
    return ramp + [final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n)) for i in range(n)]


def test_lr_seven_epochs_of_five_iterations_with_two_warmup_epochs():
    s = cosine_schedule(1.25e-4, 1e-6, 7, 5, warmup_epochs=2)
    assert len(s) == 35 and s.dtype == np.float64
    np.testing.assert_allclose(s, _by_hand(1.25e-4, 1e-6, 7, 5, 2), rtol=1e-14, atol=0)
    # warm-up: 10 points from 0 to 1.25e-4 inclusive, step 1.25e-4 / 9
    assert s[0] == 0.0 and s[9] == 1.25e-4
    np.testing.assert_allclose(np.diff(s[:10]), 1.25e-4 / 9, rtol=1e-12)
    # cosine over n = 25 iterations starts at the base value again ...
    assert s[10] == 1.25e-4
    # ... i = 12: 1e-6 + 6.2e-5 * (1 + cos(12 pi / 25)) = 1e-6 + 6.2e-5 * 1.0627905195 = 6.68930122e-5
    assert s[22] == pytest.approx(6.68930122e-5, rel=1e-8)
    # ... and ends at i = 24: 1e-6 + 6.2e-5 * (1 - cos(pi / 25)) = 1e-6 + 6.2e-5 * 0.0078852987 = 1.48889e-6,
    # not at the final value 1e-6
    assert s[-1] == pytest.approx(1.488888519e-6, rel=1e-8)
    assert np.all(np.diff(s[10:]) < 0)


def test_teacher_momentum_over_35_iterations_ends_short_of_one():
    m = cosine_schedule(0.996, 1.0, 7, 5)
    np.testing.assert_allclose(m, _by_hand(0.996, 1.0, 7, 5), rtol=1e-15, atol=0)
    assert m[0] == 0.996
    # i = 34 of n = 35: 1 - 0.002 * (1 - cos(pi / 35)) = 1 - 0.002 * 0.0040257 = 0.99999195
    assert round(float(m[-1]), 8) == 0.99999195 and m[-1] < 1.0
    assert np.all(np.diff(m) > 0)


def test_weight_decay_rises_without_warmup():
    wd = cosine_schedule(0.04, 0.4, 5, 3)
    np.testing.assert_allclose(wd, _by_hand(0.04, 0.4, 5, 3), rtol=1e-15, atol=0)
    assert wd[0] == pytest.approx(0.04, rel=1e-15)
    # i = 14 of n = 15: 0.4 - 0.18 * (1 - cos(pi / 15)) = 0.4 - 0.18 * 0.0218524 = 0.39606657
    assert wd[-1] == pytest.approx(0.39606657, abs=1e-8)


def test_warmup_with_a_start_value_and_a_single_cosine_iteration():
    s = cosine_schedule(1.0, 0.5, 3, 1, warmup_epochs=2, warmup_start_value=0.2)
    np.testing.assert_array_equal(s, [0.2, 1.0, 1.0])  # n = 1: cos(0) only, the base value


def test_warmup_as_long_as_training_ends_on_the_base_value():
    s = cosine_schedule(0.3, 0.0, 2, 5, warmup_epochs=2)
    np.testing.assert_allclose(s, 0.3 * np.arange(10) / 9, rtol=1e-15, atol=0)
    assert s[-1] == 0.3


def test_warmup_longer_than_training_keeps_its_slope_and_is_cut():
    """4 warm-up epochs of 5 iterations are a 20-point ramp 0 -> 1 (step 1/19); training stops
    after 10 iterations, so the lr is on the ramp's first 10 points and never reaches 1."""
    s = cosine_schedule(1.0, 0.0, 2, 5, warmup_epochs=4)
    np.testing.assert_allclose(s, np.arange(10) / 19, rtol=1e-15, atol=0)
    longer = cosine_schedule(1.0, 0.0, 3, 5, warmup_epochs=4)
    np.testing.assert_array_equal(longer[:10], s)  # the warm-up does not depend on the run length


def test_teacher_temperature_warmup():
    t = teacher_temperature_schedule(0.04, 0.07, 30, 100)
    assert len(t) == 100
    assert t[0] == pytest.approx(0.04)
    assert t[29] == pytest.approx(0.07)
    np.testing.assert_allclose(np.diff(t[:30]), 0.03 / 29)
    assert np.all(t[30:] == 0.07)
    constant = teacher_temperature_schedule(0.04, 0.04, 0, 5)
    assert np.all(constant == 0.04) and len(constant) == 5


def test_no_sharpening_gives_the_teacher_the_student_temperature():
    loss = LossConfig(student_temp=0.1, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=2)
    sharp = build_schedules(OptimConfig(), loss, epochs=4, steps_per_epoch=3, global_batch=8)
    np.testing.assert_allclose(sharp.teacher_temp, [0.04, 0.07, 0.07, 0.07])
    loss.sharpening = False
    flat = build_schedules(OptimConfig(), loss, epochs=4, steps_per_epoch=3, global_batch=8)
    np.testing.assert_array_equal(flat.teacher_temp, [0.1] * 4)
    assert flat.at(11).teacher_temp == 0.1
    np.testing.assert_array_equal(flat.lr, sharp.lr)  # nothing else changes
