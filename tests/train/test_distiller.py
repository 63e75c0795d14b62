"""Distiller.step keeps the host out of the step: no call of the package's code makes the host
wait for the device (CPU: the call-site recorder of tests/host_sync.py; GPU: torch's own sync
debug mode around a bf16 step)."""

from __future__ import annotations

import pytest
import torch
from torch import distributed as dist

from dinossl.config import load_config
from dinossl.objective import StepValues
from dinossl.objective.loss import DINOLoss
from dinossl.runtime.distributed import DistContext
from dinossl.train.distiller import build_distiller
from dinossl.train.step_stats import StepStats
from tests.conftest import TINY_OVERRIDES
from tests.host_sync import HostSyncRecorder

BATCH = 4


def _distiller(device: str, precision: str):
    config = load_config("vit-tiny-cifar", overrides=TINY_OVERRIDES + [f"train.precision={precision}",
                                                                        f"train.device={device}"])
    torch.manual_seed(0)
    crops = [torch.randn(BATCH, 3, 32, 32, device=device) for _ in range(2)] + [
        torch.randn(BATCH, 3, 16, 16, device=device) for _ in range(config.data.crops.num_local)]
    return build_distiller(config, DistContext(0, 1, 0, torch.device(device)), 2), crops


def _values(freeze: bool) -> StepValues:
    return StepValues(lr=1e-3, weight_decay=0.04, momentum=0.996, teacher_temp=0.04, freeze_last_layer=freeze)


@pytest.mark.parametrize("freeze", [True, False])
def test_a_bf16_step_reaches_no_host_sync_in_the_package(freeze):
    distiller, crops = _distiller("cpu", "bf16")
    assert distiller.amp_dtype == torch.bfloat16 and distiller.clip_grad > 0
    distiller.step(crops, _values(freeze))  # optimiser state created
    with HostSyncRecorder() as recorder:
        loss, stats = distiller.step(crops, _values(freeze))
    assert recorder.calls == []
    assert torch.isfinite(loss) and set(stats) == {"teacher_entropy", "kl"}


def _center_update_with_a_host_count(self, teacher_logits):
    """The center update as it was: the count built on the host, copied to the device and
    all-reduced on its own."""
    batch_sum = teacher_logits.float().sum(dim=0, keepdim=True)
    count = torch.tensor([teacher_logits.shape[0]], device=teacher_logits.device, dtype=torch.float32)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(batch_sum)
        dist.all_reduce(count)
    self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)


def test_the_recorder_sees_host_syncs(monkeypatch):
    """It catches the former center update (planted) and the statistics read at a log interval."""
    distiller, crops = _distiller("cpu", "bf16")
    monkeypatch.setattr(DINOLoss, "update_center", _center_update_with_a_host_count)
    with HostSyncRecorder(__file__) as recorder:
        distiller.step(crops, _values(False))
    assert [call.split()[-1] for call in recorder.calls] == ["tensor"]
    stats = StepStats(torch.device("cpu"))
    stats.add(0, torch.tensor(1.0), {"teacher_entropy": torch.tensor(2.0), "kl": torch.tensor(0.5)})
    with HostSyncRecorder() as recorder:
        stats.read("interval", 10, "run")
    assert any(call.endswith("tolist") for call in recorder.calls)


@pytest.mark.gpu
@pytest.mark.parametrize("freeze", [True, False])
def test_a_bf16_cuda_step_does_not_synchronise(freeze):
    """torch.cuda.set_sync_debug_mode("error") raises on any synchronising CUDA call."""
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16")
    distiller, crops = _distiller("cuda", "bf16")
    for _ in range(2):  # optimiser state, cuBLAS/cuDNN handles
        distiller.step(crops, _values(freeze))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, _ = distiller.step(crops, _values(freeze))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


@pytest.mark.gpu
def test_the_sync_debug_mode_catches_a_read_back():
    x = torch.ones(3, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            x.sum().item()
    finally:
        torch.cuda.set_sync_debug_mode("default")
