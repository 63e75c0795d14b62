"""The CUDA switches a run sets: current device, cuDNN autotuning, TF32 or IEEE float32."""

from __future__ import annotations

import pytest
import torch

from dinossl.runtime.cuda_settings import configure_cuda


@pytest.fixture
def backend_flags(monkeypatch):
    """Restore torch's flags after the test; record set_device calls instead of making them."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision,
             torch.backends.cudnn.conv.fp32_precision)
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(torch.device(device)))
    yield current
    torch.backends.cudnn.benchmark = saved[0]
    torch.backends.cuda.matmul.fp32_precision = saved[1]
    torch.backends.cudnn.conv.fp32_precision = saved[2]


@pytest.mark.parametrize("tf32, mode", [(True, "tf32"), (False, "ieee")])
def test_a_cuda_device_gets_autotuning_its_fp32_mode_and_becomes_current(backend_flags, tf32, mode):
    torch.backends.cudnn.benchmark = False
    configure_cuda(torch.device("cuda:1"), tf32=tf32)
    assert backend_flags == [torch.device("cuda:1")]
    assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cuda.matmul.fp32_precision == mode
    assert torch.backends.cudnn.conv.fp32_precision == mode


def test_a_cpu_run_changes_nothing(backend_flags):
    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision,
              torch.backends.cudnn.conv.fp32_precision)
    configure_cuda(torch.device("cpu"), tf32=True)
    configure_cuda(torch.device("cpu"), tf32=False)
    assert backend_flags == []
    assert before == (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision,
                      torch.backends.cudnn.conv.fp32_precision)


@pytest.mark.gpu
def test_tf32_and_ieee_matmuls_differ_as_expected():
    """IEEE matches a float64 product to float32 rounding; TF32 (10-bit mantissa inputs) does
    not, on a GPU with TF32 tensor cores (compute capability >= 8.0)."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("no TF32 tensor cores on this GPU")
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision,
             torch.backends.cudnn.conv.fp32_precision)
    a = torch.randn(512, 512, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    exact = (a.double() @ a.double()).float()
    try:
        configure_cuda(torch.device("cuda", torch.cuda.current_device()), tf32=False)
        ieee = (a @ a - exact).abs().max().item()
        configure_cuda(torch.device("cuda", torch.cuda.current_device()), tf32=True)
        tf32 = (a @ a - exact).abs().max().item()
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.backends.cuda.matmul.fp32_precision = saved[1]
        torch.backends.cudnn.conv.fp32_precision = saved[2]
    assert ieee < 1e-3 < tf32
