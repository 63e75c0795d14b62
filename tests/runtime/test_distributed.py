"""Process-group set-up seen from one process: the device a single process computes on
becomes current; a process group that this module creates is destroyed by shutdown."""

from __future__ import annotations

import pytest
import torch
from torch import distributed as dist

from dinossl.runtime.distributed import init_distributed, nccl_failure_note, shutdown_distributed

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def single_process(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_a_single_process_on_cuda_n_makes_that_gpu_current(single_process, monkeypatch):
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(torch.device(device)))
    ctx = init_distributed("cuda:3")
    assert ctx.device == torch.device("cuda:3") and not ctx.distributed and not ctx.owns_process_group
    assert current == [torch.device("cuda:3")]


def test_a_single_cpu_process_touches_no_gpu(single_process, monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set_device on a CPU run"))
    assert init_distributed("cpu").device == torch.device("cpu")


def test_shutdown_destroys_the_group_and_is_idempotent(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    assert dist.is_initialized()
    shutdown_distributed()
    assert not dist.is_initialized()
    shutdown_distributed()  # nothing left: no error


def test_the_nccl_note_names_the_timeout_and_the_resume():
    note = nccl_failure_note(600)
    assert "600 s" in note and "resumes" in note and "\n" not in note
