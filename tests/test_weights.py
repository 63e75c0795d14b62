"""Loading weights of every layout: released backbones, reference and project training
checkpoints, timm state dicts, torchvision ResNet-50; strict errors that name the keys."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from dinossl.config import ModelConfig
from dinossl.errors import CheckpointError
from dinossl.models import BackboneSpec, DINOHead, MultiCropNetwork, build_network, build_vit, spec_of
from dinossl.weights import (
    infer_spec,
    load_backbone,
    load_backbone_into,
    load_network,
    read_backbone_state,
    read_network_weights,
)

TINY = BackboneSpec("vit_tiny", patch_size=8, img_size=32, depth=2)




def tiny_backbone(seed: int = 0, patch_size: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return build_vit("vit_tiny", patch_size=patch_size, img_size=32, depth=2).eval()


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(7))


class ReferenceHead(nn.Module):
    """The reference's DINO head (nlayers=3), with torch's own weight-norm parametrisation:
    the old ``weight_norm`` (weight_g/weight_v) or the new ``parametrizations`` API."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int, use_bn: bool, new_api: bool):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
        layers += [nn.BatchNorm1d(hidden)] if use_bn else []
        layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        layers += [nn.BatchNorm1d(hidden)] if use_bn else []
        layers += [nn.GELU(), nn.Linear(hidden, bottleneck)]
        self.mlp = nn.Sequential(*layers)
        linear = nn.Linear(bottleneck, out_dim, bias=False)
        if new_api:
            self.last_layer = nn.utils.parametrizations.weight_norm(linear)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.last_layer = nn.utils.weight_norm(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def reference_checkpoint(path, backbone: nn.Module, head: nn.Module, teacher_module_prefix: bool) -> None:
    """A full training checkpoint laid out as the reference writes it (DESIGN.md section 2)."""
    network = MultiCropNetwork(backbone, head).state_dict()
    teacher_prefix = "module." if teacher_module_prefix else ""
    torch.save(
        {
            "student": {f"module.{k}": v + 1.0 if v.is_floating_point() else v for k, v in network.items()},
            "teacher": {f"{teacher_prefix}{k}": v for k, v in network.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
            "epoch": 5,
            "args": argparse.Namespace(arch="vit_tiny", patch_size=8, out_dim=32, norm_last_layer=False),
            "dino_loss": {"center": torch.zeros(1, 32)},
            "fp16_scaler": None,
        },
        path,
    )


@pytest.mark.parametrize("new_api,use_bn", [(False, False), (True, False), (False, True)],
                         ids=["weight_g-v", "parametrizations", "bn-head"])
def test_reference_full_checkpoint_loads_backbone_and_network(tmp_path, new_api, use_bn):
    torch.manual_seed(0)
    backbone, head = tiny_backbone(), ReferenceHead(192, 32, 24, 16, use_bn, new_api).eval()
    path = tmp_path / "checkpoint0005.pth"
    reference_checkpoint(path, backbone, head, teacher_module_prefix=use_bn)
    head_keys = {k for k in head.state_dict() if k.startswith("last_layer.")}
    new_names = {"last_layer.parametrizations.weight.original0", "last_layer.parametrizations.weight.original1"}
    assert head_keys == (new_names if new_api else {"last_layer.weight_g", "last_layer.weight_v"})

    teacher = load_backbone(path)
    assert spec_of(teacher) == TINY and not teacher.training
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in backbone.state_dict().items())
    student = load_backbone(path, which="student")
    assert torch.equal(student.cls_token, backbone.cls_token + 1.0)

    network = load_network(path)
    assert not network.training
    assert network.head.last_layer.weight_g.requires_grad  # args.norm_last_layer=False
    with torch.no_grad():
        expected = head(backbone(images()))
        assert torch.allclose(network([images()]), expected, atol=1e-6)


def test_network_state_dict_and_released_backbone_in_safetensors(tmp_path):
    backbone = tiny_backbone()
    head = DINOHead(192, out_dim=32, hidden_dim=24, bottleneck_dim=16).eval()
    save_file(MultiCropNetwork(backbone, head).state_dict(), str(tmp_path / "network.safetensors"))
    save_file(backbone.state_dict(), str(tmp_path / "backbone.safetensors"))
    network = load_network(tmp_path / "network.safetensors")
    assert not network.head.last_layer.weight_g.requires_grad  # g == 1: a normalised last layer
    with torch.no_grad():
        assert torch.equal(network([images()]), head(backbone(images())))
        assert torch.equal(load_backbone(tmp_path / "backbone.safetensors")(images()), backbone(images()))
    with pytest.raises(CheckpointError, match="backbone only"):
        load_network(tmp_path / "backbone.safetensors")
    (tmp_path / "backbone.safetensors").rename(tmp_path / "renamed.pth")  # recognised by content
    assert torch.equal(load_backbone(tmp_path / "renamed.pth").cls_token, backbone.cls_token)


def test_timm_dino_state_dict_gives_timm_output(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("vit_small_patch16_224.dino", pretrained=False).eval()  # no download
    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))  # the layout of timm's HF files
    model = load_backbone(tmp_path / "model.safetensors")
    assert spec_of(model) == BackboneSpec("vit_small", 16, 224, 12)
    x = images(1, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6)


@pytest.fixture(scope="module")
def resnet_state():
    """torchvision resnet50 state dict without fc: the released ResNet-50 layout."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.resnet50()
    reference.fc = nn.Identity()
    return reference.eval(), reference.state_dict()


def test_torchvision_resnet50_loads_with_or_without_bn_counters(tmp_path, resnet_state):
    reference, state = resnet_state
    torch.save(state, tmp_path / "r50.pth")
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "old.pth")
    x = images(2, 64)
    with torch.no_grad():
        expected = reference(x)
        for name in ("r50.pth", "old.pth"):
            model = load_backbone(tmp_path / name)
            assert spec_of(model) == BackboneSpec("resnet50")
            assert torch.equal(model(x), expected)


def test_resnet_with_classifier_is_refused_naming_fc(tmp_path, resnet_state):
    _, state = resnet_state
    torch.save({**state, "fc.weight": torch.zeros(10, 2048), "fc.bias": torch.zeros(10)}, tmp_path / "cls.pth")
    with pytest.raises(CheckpointError, match=r"unexpected: fc\.weight, fc\.bias"):
        load_backbone(tmp_path / "cls.pth")


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_other_architecture_is_refused_naming_keys(tmp_path):
    torch.save(tiny_backbone(patch_size=16).state_dict(), tmp_path / "p16.pth")
    target = tiny_backbone()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_backbone_into(target, tmp_path / "p16.pth")
    message = _one_line(info)
    assert "vit_tiny/16" in message and "model.patch_size=16" in message
    assert "pos_embed (1, 5, 192) vs model (1, 17, 192)" in message
    assert "patch_embed.proj.weight (192, 3, 16, 16) vs model (192, 3, 8, 8)" in message
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # untouched


def test_resnet_file_into_vit_names_missing_and_unexpected(tmp_path, resnet_state):
    _, state = resnet_state
    torch.save(state, tmp_path / "r50.pth")
    with pytest.raises(CheckpointError) as info:
        load_backbone_into(tiny_backbone(), tmp_path / "r50.pth")
    message = _one_line(info)
    assert "holds a resnet50 backbone" in message
    assert "missing: cls_token, pos_embed" in message and "unexpected: conv1.weight" in message


def test_single_bad_key_is_named(tmp_path):
    state = tiny_backbone().state_dict()
    cases = {
        "missing: norm.bias": {k: v for k, v in state.items() if k != "norm.bias"},
        "unexpected: head.weight": {**state, "head.weight": torch.zeros(10, 192)},
        r"wrong shape: blocks\.1\.mlp\.fc1\.bias \(10,\) vs model \(768,\)": {
            **state, "blocks.1.mlp.fc1.bias": torch.zeros(10)},
    }
    for pattern, bad in cases.items():
        torch.save(bad, tmp_path / "bad.pth")
        with pytest.raises(CheckpointError, match=pattern):
            load_backbone(tmp_path / "bad.pth", spec=TINY)


def test_explicit_spec_that_does_not_fit_says_what_the_file_holds(tmp_path):
    torch.save(tiny_backbone().state_dict(), tmp_path / "tiny.pth")
    expected = r"holds a vit_tiny/8 \(depth 2, img_size 32\) backbone, the model is a vit_small/16"
    with pytest.raises(CheckpointError, match=expected):
        load_backbone(tmp_path / "tiny.pth", spec=BackboneSpec("vit_small", 16))


def test_layout_errors(tmp_path):
    state = tiny_backbone().state_dict()
    torch.save(state, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a training checkpoint with a 'student' entry"):
        read_backbone_state(tmp_path / "plain.pth", which="student")
    torch.save({"student": {f"backbone.{k}": v for k, v in state.items()}}, tmp_path / "student_only.pth")
    with pytest.raises(CheckpointError, match="without a 'teacher' state dict"):
        read_backbone_state(tmp_path / "student_only.pth")
    torch.save({**{f"backbone.{k}": v for k, v in state.items()}, "extra.x": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"keys outside backbone\./head\.: extra\.x"):
        read_backbone_state(tmp_path / "extra.pth")
    torch.save({"epoch": 3, "names": ["a"]}, tmp_path / "notensors.pth")
    with pytest.raises(CheckpointError, match="holds no state dict of tensors"):
        read_backbone_state(tmp_path / "notensors.pth")
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(CheckpointError, match="not a PyTorch"):
        read_backbone_state(tmp_path / "text.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_backbone_state(tmp_path / "absent.pth")


def test_prefixes_are_removed_and_spec_inferred(tmp_path):
    state = tiny_backbone().state_dict()
    torch.save({"model": {f"module._orig_mod.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    read = read_backbone_state(tmp_path / "wrapped.pth")
    assert list(read) == list(state)
    assert infer_spec(read) == TINY
    weights = read_network_weights(tmp_path / "wrapped.pth")
    assert weights.head == {} and not weights.training_checkpoint


def test_project_checkpoint_settings_are_read(tmp_path):
    backbone, head = tiny_backbone(), DINOHead(192, out_dim=32, hidden_dim=24, bottleneck_dim=16, norm_last_layer=False)
    network = MultiCropNetwork(backbone, head).state_dict()
    with torch.no_grad():  # g == 1 everywhere, yet the recorded config says the norm is learned
        network["head.last_layer.weight_g"].fill_(1.0)
    torch.save({"student": network, "teacher": network, "epoch": 1, "config": {"model": {"norm_last_layer": False}}},
               tmp_path / "checkpoint.pth")
    weights = read_network_weights(tmp_path / "checkpoint.pth")
    assert weights.training_checkpoint and weights.settings == {"norm_last_layer": False}
    assert load_network(tmp_path / "checkpoint.pth").head.last_layer.weight_g.requires_grad


def test_a_students_predictor_is_not_part_of_its_network(tmp_path):
    """A student trained with the predictor ablation reads as backbone + head: the predictor is a
    training-only part."""
    config = ModelConfig(arch="vit_tiny", patch_size=8, img_size=32, depth=1, out_dim=40, head_hidden_dim=24,
                         head_bottleneck_dim=8, predictor=True)
    student, teacher = build_network(config, student=True), build_network(config, student=False)
    path = tmp_path / "checkpoint.pth"
    torch.save({"student": student.state_dict(), "teacher": teacher.state_dict(), "epoch": 1}, path)
    backbone = load_backbone(path, which="student")
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, student.backbone.state_dict()[key])
