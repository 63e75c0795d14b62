"""Peak memory: on a CPU, the process's peak resident set since the last reset."""

import mmap

import pytest
import torch

from dinossl.study.memory import PeakMemory

SIZE = 64 * 2**20


def test_cpu_peak_rises_with_an_allocation_and_falls_back_after_a_reset():
    memory = PeakMemory(torch.device("cpu"))
    if not memory.measurable:
        pytest.skip("no /proc/self/status VmHWM or /proc/self/clear_refs on this system")
    before = memory.read()
    block = mmap.mmap(-1, SIZE)  # fresh pages (not memory the allocator already holds), touched
    block.write(b"\x01" * SIZE)
    during = memory.read()
    block.close()
    assert during - before > 48 * 2**20
    memory.reset()
    assert memory.read() < during - 32 * 2**20
    read, reset = memory.monitors()
    record = read.after_epoch(3, None).record
    assert record["kind"] == "memory" and record["epoch"] == 3 and record["measure"] == "process_peak_rss"
    assert reset.after_epoch(3, None) is None and read.after_training(None) is None
