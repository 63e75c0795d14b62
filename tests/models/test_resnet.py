"""ResNet-50: the reference's convnet (torchvision's resnet50 with fc removed) with the same weights."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dinossl.config import ModelConfig
from dinossl.models import build_network


def _reference_head(in_dim, out_dim, hidden, bottleneck, use_bn, state):
    """The reference's DINOHead (nlayers=3) as plain modules, loaded with ``state``."""
    layers = [nn.Linear(in_dim, hidden)] + ([nn.BatchNorm1d(hidden)] if use_bn else []) + [nn.GELU()]
    layers += [nn.Linear(hidden, hidden)] + ([nn.BatchNorm1d(hidden)] if use_bn else []) + [nn.GELU()]
    layers += [nn.Linear(hidden, bottleneck)]
    mlp = nn.Sequential(*layers)
    last = torch.nn.utils.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
    mlp.load_state_dict({k[len("mlp."):]: v for k, v in state.items() if k.startswith("mlp.")})
    last.load_state_dict({k[len("last_layer."):]: v for k, v in state.items() if k.startswith("last_layer.")})
    return mlp, last


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
# train: BatchNorm on batch statistics, as DINO's teacher and student run; the BN head is an option
@pytest.mark.parametrize("mode, use_bn", [("eval", False), ("train", True)], ids=["eval-plain-head", "train-bn-head"])
def test_features_and_head_equal_torchvision_resnet50_without_fc(mode, use_bn):
    torch.manual_seed(0)
    config = ModelConfig(arch="resnet50", out_dim=128, head_hidden_dim=256, head_bottleneck_dim=64, use_bn_in_head=use_bn)
    ours = build_network(config, student=False)
    reference = torchvision.models.resnet50()
    reference.fc = nn.Identity()  # what the reference's MultiCropWrapper does; the released layout
    reference.load_state_dict(ours.backbone.state_dict(), strict=True)
    mlp, last = _reference_head(2048, 128, 256, 64, use_bn, ours.head.state_dict())
    for module in (ours, reference, mlp, last):
        module.train(mode == "train")

    generator = torch.Generator().manual_seed(1)
    crops = [torch.randn(2, 3, 224, 224, generator=generator) for _ in range(2)]
    crops += [torch.randn(2, 3, 96, 96, generator=generator) for _ in range(2)]
    with torch.no_grad():
        features = [reference(torch.cat(crops[:2])), reference(torch.cat(crops[2:]))]  # one pass per resolution
        logits = last(F.normalize(mlp(torch.cat(features)), dim=-1, p=2))
        assert torch.equal(ours.backbone(torch.cat(crops[:2])), features[0])
        assert torch.equal(ours.backbone(torch.cat(crops[2:])), features[1])
        assert features[0].shape == (4, 2048) and features[1].shape == (4, 2048)
        torch.testing.assert_close(ours(crops), logits, rtol=1e-5, atol=1e-6)  # weight norm: torch's fused kernel
    assert not any(k.startswith("fc.") for k in ours.backbone.state_dict())
