"""Test helper: start a worker script as the ranks of a gloo job, with the environment torchrun
gives its processes, and wait for all of them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """This process's environment for a child that imports the checkout's package and tests."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))


def start_ranks(worker: Path, args: Sequence[str], world_size: int,
                ranks: Optional[Iterable[int]] = None) -> list[subprocess.Popen]:
    """``python worker *args`` once per rank (all of ``range(world_size)`` unless ``ranks``)."""
    port = str(free_port())
    procs = []
    for rank in ranks if ranks is not None else range(world_size):
        env = dict(child_env(), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                   LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(worker), *args], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def wait_all(procs: Sequence[subprocess.Popen], timeout: float, what: str = "the job") -> list[tuple[int, str]]:
    """Wait for every process, ``timeout`` seconds in all; [(exit status, stderr)]. Past the
    deadline every process is killed and the test fails."""
    results = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"{what} did not end within {timeout} s")
        results.append((proc.returncode, err))
    return results
