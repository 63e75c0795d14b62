"""The evaluation job runner around the protocols: the process group it joins is destroyed on
every exit, errors included."""

from __future__ import annotations

import pytest
import torch
from torch import distributed as dist
from torch import nn

from dinossl.errors import DataError
from dinossl.eval.classification import protocols
from dinossl.eval.classification.protocols import EvalTarget, ImageSettings
from dinossl.inference import BackboneHarness
from dinossl.runtime.distributed import DistContext


class _Splits:
    def describe(self) -> dict:
        return {}


@pytest.mark.parametrize("fails", [False, True])
def test_the_process_group_is_destroyed_on_every_exit(tmp_path, monkeypatch, fails):
    def joined(device, timeout_s):  # a one-process gloo group stands in for torchrun's
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
        return DistContext(0, 1, 0, torch.device("cpu"), owns_process_group=True)

    monkeypatch.setattr(protocols, "init_distributed", joined)
    monkeypatch.setattr(protocols, "open_splits", lambda *args: _Splits())
    monkeypatch.setattr(BackboneHarness, "load_module", lambda self: nn.Identity())
    monkeypatch.setattr(protocols, "describe_backbone", lambda backbone: {})

    def body(backbone, splits, ctx, cache, folder):
        assert dist.is_initialized()
        if fails:
            raise DataError("unreadable split")
        return "test", {}, {}

    target = EvalTarget(weights="none.pth", output=tmp_path / "out")
    try:
        if fails:
            with pytest.raises(DataError):
                protocols._run(target, "test", ImageSettings(), body)
        else:
            assert protocols._run(target, "test", ImageSettings(), body)["protocol"] == "test"
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
