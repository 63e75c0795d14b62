"""The Distiller's speed settings leave its step's result alone: packed crops and activation
checkpointing (CPU, fp32, against the plain step), torch.compile's wiring (CPU, with a stand-in
compiler), and on a GPU the compiled step and checkpointing's memory."""

from __future__ import annotations

import pytest
import torch

from dinossl.config import load_config
from dinossl.objective import StepValues
from dinossl.runtime.distributed import DistContext
from dinossl.train.distiller import build_distiller

VALUES = StepValues(lr=1e-3, weight_decay=0.04, momentum=0.99, teacher_temp=0.04, freeze_last_layer=False)


def _config(*extra: str):
    return load_config("vit-tiny-cifar", overrides=[
        "model.depth=2", "model.out_dim=64", "model.head_hidden_dim=32", "model.head_bottleneck_dim=16",
        "model.drop_path=0.0", "data.crops.num_local=2", "train.precision=fp32", "train.device=cpu", *extra])


def _crops(device: str = "cpu", batch: int = 4, large: int = 32, small: int = 16, num_local: int = 2):
    generator = torch.Generator().manual_seed(0)
    sizes = [large, large] + [small] * num_local
    return [torch.randn(batch, 3, s, s, generator=generator).to(device) for s in sizes]


def _step(config, crops, ctx=DistContext(0, 1, 0, torch.device("cpu")), steps: int = 2):
    distiller = build_distiller(config, ctx, num_teacher_views=2)
    losses = [distiller.step(crops, VALUES)[0].item() for _ in range(steps)]
    return distiller, losses


@pytest.mark.parametrize("setting", ["train.pack_crops=true", "train.activation_checkpointing=true"])
def test_speed_setting_gives_the_plain_steps(setting):
    crops = _crops()
    plain, plain_losses = _step(_config(), crops)
    other, other_losses = _step(_config(setting), crops)
    assert other_losses == pytest.approx(plain_losses, rel=1e-5)
    assert other_losses[0] != other_losses[1]  # the first step moved the weights
    # Adam's first moments (a running sum of the clipped gradients) rather than the weights: Adam
    # turns rounding-level gradients (the attention's key biases) into whole lr-sized steps.
    for a, b in zip(plain.optimizer.state.values(), other.optimizer.state.values()):
        torch.testing.assert_close(b["exp_avg"], a["exp_avg"], rtol=1e-4, atol=1e-7)


def test_compile_wraps_student_teacher_and_loss(monkeypatch):
    compiled = []

    def stand_in(module):  # records what would be compiled and runs it unchanged
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", stand_in)
    crops = _crops()
    plain, plain_losses = _step(_config(), crops)
    distiller, losses = _step(_config("train.compile=true"), crops)
    assert distiller.compiled
    assert compiled == [distiller.student, distiller.teacher, distiller.loss_fn]
    assert losses == pytest.approx(plain_losses, rel=1e-6)  # the temperature arrives as a tensor
    assert list(distiller.state_dict()["student"]) == list(plain.state_dict()["student"])  # no _orig_mod. keys


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16"])  # one compilation: the GPU check's time is short
def test_compiled_step_matches_eager_on_the_gpu(precision):
    ctx = DistContext(0, 1, 0, torch.device("cuda"))
    crops = _crops("cuda", batch=8)
    _, eager = _step(_config("train.device=cuda", f"train.precision={precision}"), crops, ctx, steps=3)
    _, compiled = _step(_config("train.device=cuda", f"train.precision={precision}", "train.compile=true"), crops,
                        ctx, steps=3)
    assert compiled == pytest.approx(eager, rel=1e-3 if precision == "fp32" else 2e-2)


@pytest.mark.gpu
def test_packed_crops_match_two_passes_on_the_gpu():
    ctx = DistContext(0, 1, 0, torch.device("cuda"))
    crops = _crops("cuda", batch=8, large=64, small=32, num_local=4)
    _, plain = _step(_config("train.device=cuda", "data.crops.num_local=4", "data.crops.global_size=64",
                             "data.crops.local_size=32"), crops, ctx)
    _, packed = _step(_config("train.device=cuda", "data.crops.num_local=4", "data.crops.global_size=64",
                              "data.crops.local_size=32", "train.pack_crops=true"), crops, ctx)
    assert packed == pytest.approx(plain, rel=1e-4)


@pytest.mark.gpu
def test_activation_checkpointing_lowers_peak_memory_on_the_gpu():
    ctx = DistContext(0, 1, 0, torch.device("cuda"))
    crops = _crops("cuda", batch=32, large=128, small=64, num_local=4)
    peaks = {}
    for setting in ("false", "true"):
        config = _config("train.device=cuda", "model.depth=6", "model.patch_size=16", "model.img_size=128",
                         "data.crops.global_size=128", "data.crops.local_size=64", "data.crops.num_local=4",
                         f"train.activation_checkpointing={setting}")
        distiller = build_distiller(config, ctx, num_teacher_views=2)
        distiller.step(crops, VALUES)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        distiller.step(crops, VALUES)[0].item()
        peaks[setting] = torch.cuda.max_memory_allocated()
        del distiller
        torch.cuda.empty_cache()
    assert peaks["true"] < 0.8 * peaks["false"]
