"""Preemption signals are recorded while installed and restored after."""

import signal

import torch

from dinossl.train.preemption import PreemptionSignals, requeue_exit_status


def test_signals_are_recorded_and_previous_handlers_restored():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionSignals() as signals:
        assert signals.agreed(torch.device("cpu"), distributed=False) == 0
        signal.raise_signal(signal.SIGUSR1)
        assert signals.agreed(torch.device("cpu"), distributed=False) == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before


def test_exit_status_is_the_one_a_shell_reports_for_the_signal():
    assert requeue_exit_status(signal.SIGTERM) == 143 and requeue_exit_status(signal.SIGUSR1) == 138
