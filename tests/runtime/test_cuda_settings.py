"""The CUDA switches a run sets: current device, cuDNN autotuning, TF32 or IEEE float32.

The conftest's autouse fixture restores torch's float32 arithmetic switches after each test.
"""

from __future__ import annotations

import pytest
import torch

from dinossl.runtime.cuda_settings import configure_cuda


def _readable_settings() -> tuple[str, bool, bool]:
    """What inductor and other libraries read; raises after a mix of torch's two APIs."""
    return (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32)


@pytest.fixture
def set_device_calls(monkeypatch) -> list[torch.device]:
    """Record set_device calls instead of making them (no GPU needed); cudnn.benchmark is
    restored by the conftest fixture."""
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(torch.device(device)))
    return current


def test_the_newer_fp32_precision_attribute_breaks_reads_through_the_older_api():
    """Why configure_cuda never sets ``fp32_precision``: torch (2.9 to at least 2.14) raises on
    the reads inductor makes once a program did (the conftest fixture sets things back)."""
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision attributes")
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        torch.get_float32_matmul_precision()
    except RuntimeError as exc:
        assert "legacy and new" in str(exc)
    else:
        pytest.skip("this torch accepts the mix of its two precision APIs")


@pytest.mark.parametrize("tf32, matmul", [(True, "high"), (False, "highest")])
def test_a_cuda_device_gets_autotuning_its_fp32_mode_and_becomes_current(set_device_calls, tf32, matmul):
    torch.backends.cudnn.benchmark = False
    configure_cuda(torch.device("cuda:1"), tf32=tf32)
    assert set_device_calls == [torch.device("cuda:1")]
    assert torch.backends.cudnn.benchmark is True
    # every read through the long-standing API works afterwards (compile reads them)
    assert _readable_settings() == (matmul, tf32, tf32)
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # and the newer API agrees
        assert torch.backends.cuda.matmul.fp32_precision == ("tf32" if tf32 else "ieee")


def test_configure_cuda_after_a_library_set_the_newer_attribute_leaves_settings_readable(set_device_calls):
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    configure_cuda(torch.device("cuda:0"), tf32=True)
    assert _readable_settings() == ("high", True, True)


def test_a_cpu_run_changes_nothing(set_device_calls):
    before = (torch.backends.cudnn.benchmark, *_readable_settings())
    configure_cuda(torch.device("cpu"), tf32=True)
    configure_cuda(torch.device("cpu"), tf32=False)
    assert set_device_calls == []
    assert before == (torch.backends.cudnn.benchmark, *_readable_settings())


@pytest.mark.gpu
def test_tf32_and_ieee_matmuls_differ_as_expected():
    """IEEE matches a float64 product to float32 rounding; TF32 (10-bit mantissa inputs) does
    not, on a GPU with TF32 tensor cores (compute capability >= 8.0)."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("no TF32 tensor cores on this GPU")
    a = torch.randn(512, 512, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    exact = (a.double() @ a.double()).float()
    configure_cuda(torch.device("cuda", torch.cuda.current_device()), tf32=False)
    ieee = (a @ a - exact).abs().max().item()
    configure_cuda(torch.device("cuda", torch.cuda.current_device()), tf32=True)
    tf32 = (a @ a - exact).abs().max().item()
    assert ieee < 1e-3 < tf32


@pytest.mark.gpu
@pytest.mark.parametrize("tf32, dtype", [(True, None), (False, None), (False, torch.bfloat16)])
def test_compiled_training_step_after_configure_cuda(tf32, dtype):
    """configure_cuda, then a compiled forward/backward/optimiser step of a small ViT block in
    float32 (TF32 or IEEE) and under bf16 autocast: inductor reads the matmul precision while
    compiling, which raised after the newer attribute had been set."""
    from timm.models.vision_transformer import Block

    configure_cuda(torch.device("cuda", torch.cuda.current_device()), tf32=tf32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(Block(64, 4), torch.nn.LayerNorm(64)).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    compiled = torch.compile(model)
    x = torch.randn(8, 17, 64, device="cuda")
    losses = []
    for _ in range(3):
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = compiled(x).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert _readable_settings()[0] == ("high" if tf32 else "highest")
