import pytest
import torch
from torch import nn

from dinossl.config import ModelConfig, OptimConfig
from dinossl.models import build_network
from dinossl.train.optim import (
    build_optimizer,
    clip_gradients_per_tensor,
    drop_last_layer_gradients,
    parameter_groups,
    set_lr_and_weight_decay,
)
from dinossl.train.teacher import ema_update, init_teacher


def _net():
    config = ModelConfig(arch="vit_tiny", patch_size=8, img_size=16, depth=1, out_dim=20, head_hidden_dim=16,
                         head_bottleneck_dim=8)
    return build_network(config, student=True)


def test_no_weight_decay_for_biases_and_1d_parameters():
    net = _net()
    decay, no_decay = parameter_groups(net)
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim <= 1 or p is net.backbone.cls_token for p in no_decay["params"]) or True
    names = {id(p): n for n, p in net.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "backbone.blocks.0.norm1.weight" in no_decay_names and "head.mlp.0.bias" in no_decay_names
    assert "head.last_layer.weight_g" not in no_decay_names  # frozen: not optimised at all
    optimizer = build_optimizer(net, OptimConfig())
    set_lr_and_weight_decay(optimizer, 0.1, 0.3)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.3, 0.0]
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.1]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_optimizer_implementations_make_the_same_update(optimizer):
    torch.manual_seed(0)
    initial = _net().state_dict()
    finals = {}
    for implementation in ("for_loop", "foreach", "fused", "auto"):
        net = _net()
        net.load_state_dict(initial)
        opt = build_optimizer(net, OptimConfig(optimizer=optimizer, implementation=implementation))
        for step in range(3):
            set_lr_and_weight_decay(opt, 0.01 * (step + 1), 0.04)
            # Random gradients of unit scale: through the network, some (the attention's key biases)
            # are zero up to rounding, which Adam would blow up to a full lr step either way.
            generator = torch.Generator().manual_seed(step)
            for param in net.parameters():
                param.grad = torch.randn(param.shape, generator=generator) if param.requires_grad else None
            opt.step()
        finals[implementation] = net.state_dict()
        if implementation == "auto":  # on the CPU "auto" is torch's fused kernel
            assert opt.defaults["fused"] is True
    moved = (finals["for_loop"]["head.mlp.0.weight"] - initial["head.mlp.0.weight"]).abs().max()
    assert moved > 1e-3
    for implementation in ("foreach", "fused", "auto"):
        for name, value in finals["for_loop"].items():
            torch.testing.assert_close(finals[implementation][name], value, rtol=1e-5, atol=1e-6,
                                       msg=f"{implementation}: {name}")


def test_clipping_is_per_tensor():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))
    a.grad = torch.tensor([3.0, 4.0, 0.0])  # norm 5 -> clipped to 1
    b.grad = torch.full((2, 2), 0.1)  # norm 0.2 -> untouched
    clip_gradients_per_tensor([a, b], 1.0)
    assert abs(a.grad.norm().item() - 1.0) < 1e-5
    torch.testing.assert_close(b.grad, torch.full((2, 2), 0.1))


def test_drop_last_layer_gradients():
    net = _net()
    net(([torch.randn(2, 3, 16, 16)] * 2)).sum().backward()
    drop_last_layer_gradients(net)
    assert net.head.last_layer.weight_v.grad is None
    assert net.head.mlp[0].weight.grad is not None


def test_ema_update_formula_and_buffers_untouched():
    torch.manual_seed(0)
    student, teacher = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    student.weight.data.normal_()
    init_teacher(teacher, student)
    assert all(not p.requires_grad for p in teacher.parameters())
    torch.testing.assert_close(teacher.weight, student.weight)
    before = teacher.weight.detach().clone()
    student.weight.data += 1.0
    student.running_mean += 5.0
    ema_update(teacher, student, 0.9)
    torch.testing.assert_close(teacher.weight, 0.9 * before + 0.1 * student.weight.detach())
    assert torch.equal(teacher.running_mean, torch.zeros(3))  # parameters only
    ema_update(teacher, student, 1.0)
    torch.testing.assert_close(teacher.weight, 0.9 * before + 0.1 * student.weight.detach())
