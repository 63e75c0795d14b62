"""Saved optimiser states: the older weight_v-before-weight_g order is put right, misfits are refused."""

import io

import pytest
import torch

from dinossl.config import ModelConfig, OptimConfig
from dinossl.errors import CheckpointError
from dinossl.models import build_network
from dinossl.train.optim import build_optimizer
from dinossl.train.optimizer_state import fit_optimizer_state, written_with_v_before_g

CONFIG = ModelConfig(arch="vit_tiny", patch_size=8, img_size=16, depth=1, out_dim=20, head_hidden_dim=16,
                     head_bottleneck_dim=8, norm_last_layer=False, drop_path=0.0)


def _network(legacy: bool):
    """The student; ``legacy``: its last layer registers weight_v before weight_g, as the package
    did before (the older code's parameter order, hence its optimiser's)."""
    torch.manual_seed(0)
    net = build_network(CONFIG, student=True)
    if legacy:
        layer = net.head.last_layer
        layer._parameters["weight_g"] = layer._parameters.pop("weight_g")  # move g after v
    return net


def _steps(net, optimizer, count, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        crops = [torch.randn(2, 3, 16, 16, generator=generator) for _ in range(2)]
        optimizer.zero_grad()
        (net(crops).logsumexp(-1).sum() + net(crops).pow(2).sum()).backward()
        optimizer.step()


def _through_a_file(state):
    """What a checkpoint file gives back: copies, in saved order."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _set_lr(optimizer):
    for group in optimizer.param_groups:
        group["lr"] = 1e-2


def test_older_order_is_detected_from_the_saved_keys():
    legacy, current = _network(legacy=True), _network(legacy=False)
    assert written_with_v_before_g(list(legacy.state_dict()))
    assert not written_with_v_before_g(list(current.state_dict()))
    assert not written_with_v_before_g(["backbone.norm.weight"])  # no head: nothing to tell


def test_older_checkpoint_resumes_as_if_never_interrupted():
    old = _network(legacy=True)
    names = [n for n, _ in old.named_parameters()]
    assert names.index("head.last_layer.weight_v") < names.index("head.last_layer.weight_g")
    old_optimizer = build_optimizer(old, OptimConfig())
    _set_lr(old_optimizer)
    _steps(old, old_optimizer, 2, seed=1)
    saved_model, saved_optimizer = _through_a_file(old.state_dict()), _through_a_file(old_optimizer.state_dict())

    new = _network(legacy=False)
    new.load_state_dict(saved_model)
    optimizer = build_optimizer(new, OptimConfig())
    optimizer.load_state_dict(fit_optimizer_state(saved_optimizer, optimizer, new, list(saved_model), "ckpt"))
    old_params, new_params = dict(old.named_parameters()), dict(new.named_parameters())
    for name in ("head.last_layer.weight_g", "head.last_layer.weight_v", "head.mlp.4.weight"):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizer.state[new_params[name]][key], old_optimizer.state[old_params[name]][key])

    _steps(old, old_optimizer, 2, seed=2)  # the old run continues ...
    _steps(new, optimizer, 2, seed=2)  # ... and so does the resumed one
    for name, param in new.named_parameters():
        assert torch.equal(param, old_params[name]), name


def test_without_the_remap_torch_would_pair_the_states_with_the_wrong_parameters():
    old = _network(legacy=True)
    old_optimizer = build_optimizer(old, OptimConfig())
    _steps(old, old_optimizer, 1, seed=1)
    new = _network(legacy=False)
    optimizer = build_optimizer(new, OptimConfig())
    optimizer.load_state_dict(old_optimizer.state_dict())  # accepted silently
    g = new.head.last_layer.weight_g
    assert optimizer.state[g]["exp_avg"].shape != g.shape


def test_frozen_norm_older_checkpoint_loads_unchanged():
    config = ModelConfig(**{**CONFIG.__dict__, "norm_last_layer": True})
    torch.manual_seed(0)
    old = build_network(config, student=True)
    layer = old.head.last_layer
    layer._parameters["weight_g"] = layer._parameters.pop("weight_g")
    old_optimizer = build_optimizer(old, OptimConfig())
    _steps(old, old_optimizer, 1, seed=1)
    torch.manual_seed(0)
    new = build_network(config, student=True)
    optimizer = build_optimizer(new, OptimConfig())
    fitted = fit_optimizer_state(old_optimizer.state_dict(), optimizer, new, list(old.state_dict()), "ckpt")
    assert fitted["state"].keys() == old_optimizer.state_dict()["state"].keys()
    optimizer.load_state_dict(fitted)


def test_a_state_that_does_not_fit_is_refused_naming_the_parameter():
    net = _network(legacy=False)
    optimizer = build_optimizer(net, OptimConfig())
    _steps(net, optimizer, 1, seed=1)
    saved = optimizer.state_dict()
    names = [n for group in optimizer.param_groups for n, p in net.named_parameters()
             if any(p is q for q in group["params"])]
    position = names.index("head.mlp.0.weight")
    saved["state"][position]["exp_avg"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"ckpt: .*'exp_avg' of head.mlp.0.weight is \(3, 3\)") as info:
        fit_optimizer_state(saved, optimizer, net, list(net.state_dict()), "ckpt")
    assert "\n" not in str(info.value)
    short = {**saved, "param_groups": [saved["param_groups"][0]]}
    with pytest.raises(CheckpointError, match="parameters, this model trains"):
        fit_optimizer_state(short, optimizer, net, list(net.state_dict()), "ckpt")
