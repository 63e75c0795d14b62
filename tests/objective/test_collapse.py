import math

from dinossl.objective import CollapseMonitor


def test_uniform_collapse_reported_once_after_patience():
    monitor = CollapseMonitor(out_dim=1000, patience=3)
    uniform = math.log(1000) * 0.999
    assert monitor.update(uniform, 1e-5) is None
    assert monitor.update(uniform, 1e-5) is None
    message = monitor.update(uniform, 1e-5)
    assert message and "uniform" in message and "teacher_temp" in message
    assert monitor.update(uniform, 1e-5) is None  # said once


def test_dimensional_collapse_and_healthy_runs():
    monitor = CollapseMonitor(out_dim=1000, patience=2)
    assert monitor.update(0.01, 0.0) is None
    assert "dimensional" in monitor.update(0.01, 0.0)
    healthy = CollapseMonitor(out_dim=1000, patience=1)
    assert healthy.update(3.0, 0.5) is None  # entropy in between, KL well above 0
    assert healthy.update(math.log(1000), 0.5) is None  # uniform teacher but student differs


def test_streak_resets_on_a_healthy_record():
    monitor = CollapseMonitor(out_dim=100, patience=2)
    assert monitor.update(0.0, 0.0) is None
    assert monitor.update(2.0, 1.0) is None
    assert monitor.update(0.0, 0.0) is None
