"""The autocast dtype a precision name resolves to, by the compute capability of the run's GPU."""

from __future__ import annotations

import pytest
import torch

from dinossl.errors import DinoError
from dinossl.runtime.precision import has_native_bf16, resolve_precision


@pytest.fixture
def capabilities(monkeypatch):
    """Pretend GPUs: {index: (major, minor)}; torch's own bf16 query answers True for all of
    them, as it does for GPUs that only emulate bf16."""
    table: dict[int, tuple[int, int]] = {}

    def capability(device=None):
        index = torch.device(device).index if device is not None else torch.cuda.current_device()
        return table[index]

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return table


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                                   ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_is_bf16_from_compute_capability_8_and_fp16_before(capabilities, capability, expected):
    capabilities[0] = capability
    device = torch.device("cuda:0")
    assert has_native_bf16(device) == (expected == torch.bfloat16)
    assert resolve_precision("auto", device) == expected


def test_the_run_device_decides_not_the_current_one(capabilities):
    capabilities.update({0: (8, 0), 1: (7, 5)})  # current device 0 is an A100, the run's is a T4
    assert resolve_precision("auto", torch.device("cuda:1")) == torch.float16
    assert resolve_precision("auto", torch.device("cuda:0")) == torch.bfloat16


def test_explicit_names_and_the_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if has_native_bf16(cpu) else None)  # this CPU's flags
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    with pytest.raises(DinoError, match="finetune.precision=fp16 needs a CUDA or Apple-silicon"):
        resolve_precision("fp16", cpu, "finetune.precision")
    with pytest.raises(DinoError, match="train.precision must be one of"):
        resolve_precision("half", cpu)
