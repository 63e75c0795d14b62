"""How many processor cores this process may use, and the loader workers that fit in them."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("dinossl")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system reports it, else the
    machine's count; at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cap_workers(requested: int, what: str = "num_workers") -> int:
    """``requested`` loader worker processes, at most one per available core (a note in the log
    when lowered); 0 stays 0 (images decoded in the main process)."""
    cores = available_cores()
    if requested > cores:
        log.info("%s: %d asked, %d cores available; using %d", what, requested, cores, cores)
        return cores
    return requested
