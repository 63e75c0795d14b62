"""Devices: auto picks a CUDA GPU, else an Apple-silicon GPU (mps), else the CPU; precisions
per device. The MPS end-to-end test runs only on a Mac with an Apple-silicon GPU."""

from __future__ import annotations

import pytest
import torch

from dinossl.cli import main
from dinossl.errors import DinoError
from dinossl.runtime.device import mps_available, resolve_device
from dinossl.runtime.precision import resolve_precision
from tests.conftest import TINY_OVERRIDES

needs_mps = pytest.mark.skipif(not mps_available(), reason="needs an Apple-silicon GPU (MPS); torch sees none here")


@pytest.fixture
def only_mps(monkeypatch):
    """A machine without CUDA whose torch reports an Apple-silicon GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, only_mps):
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("mps") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda:1")


def test_mps_that_is_not_there_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DinoError, match=r"device mps: (no Apple-silicon GPU|this torch was built without MPS)"):
        resolve_device("mps")


def test_precisions_on_mps_and_cpu():
    mps = torch.device("mps")
    assert resolve_precision("auto", mps) is None and resolve_precision("fp32", mps) is None
    assert resolve_precision("fp16", mps) == torch.float16
    with pytest.raises(DinoError, match="fp16 needs a CUDA or Apple-silicon"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16


def test_cli_refuses_mps_where_there_is_none(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert main(["train", "--device", "mps", "--output", str(tmp_path / "run"), "train.epochs=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dino train: error: device mps:")


@needs_mps
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_train_eval_and_attention_on_mps(tmp_path, tiny_image_folder, precision, capsys):
    run = tmp_path / "run"
    assert main(["train", "--device", "mps", "--data", str(tiny_image_folder), "--output", str(run),
                 "--preset", "vit-tiny-cifar", *TINY_OVERRIDES, f"train.precision={precision}"]) == 0
    assert (run / "teacher_backbone.safetensors").is_file()
    assert main(["eval", "knn", str(run / "checkpoint.pth"), "--train", str(tiny_image_folder), "--val",
                 str(tiny_image_folder), "--device", "mps", "--resize", "32", "--crop", "32", "--num-workers", "0",
                 "--output", str(tmp_path / "knn")]) == 0
    image = next(tiny_image_folder.rglob("*.png"))
    assert main(["attention", str(run / "checkpoint.pth"), str(image), "--device", "mps", "--native-size",
                 "--output", str(tmp_path / "attention")]) == 0
