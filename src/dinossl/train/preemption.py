"""Preemption: SIGTERM or SIGUSR1 asks a run to stop at the next step boundary.

A cluster scheduler (SLURM: on preemption, or ``--signal=B:USR1@SECONDS`` before the time
limit) signals every process of the job. The handler only records the signal; the trainer
finishes the step in flight, writes a checkpoint of that step and ends the run with
:func:`requeue_exit_status` (128 + the signal's number: 143 for SIGTERM, 138 for SIGUSR1, the
status a shell reports for a process the signal ended), so that a job script can tell
"preempted, resumable" from success and from bad input (2), and requeue the same command.

Processes of a distributed run agree on the step at which they stop: each checks the others'
flags with one all-reduce at the steps where the trainer synchronises anyway (log intervals,
checkpoints, epoch ends); a single process checks after every step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Optional

import torch

from dinossl.runtime.distributed import all_reduce

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def requeue_exit_status(signum: int) -> int:
    """The exit status of a run that stopped on ``signum`` with its checkpoint written."""
    return 128 + signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class PreemptionSignals:
    """Records SIGTERM / SIGUSR1 while installed (a context manager; the previous handlers are
    restored on exit). Installs nothing outside the main thread, where Python allows no handler."""

    def __init__(self) -> None:
        self.received = 0  # the last signal's number, 0 for none
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: Optional[FrameType]) -> None:
        self.received = signum

    def __enter__(self) -> "PreemptionSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in PREEMPTION_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def agreed(self, device: torch.device, distributed: bool) -> int:
        """The signal any process received (0: none); a collective when ``distributed``."""
        if not distributed:
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64, device=device)
        return int(all_reduce(flag, "max").item())
