"""Backbones (timm ViT, torchvision ResNet-50), the DINO head and the multi-crop network."""

from __future__ import annotations

from torch import nn

from dinossl.config import ModelConfig
from dinossl.models.head import DINOHead, WeightNormLinear
from dinossl.models.multicrop import MultiCropNetwork
from dinossl.models.resnet import ResNetBackbone, build_resnet50
from dinossl.models.vit import VIT_SIZES, ViTBackbone, build_vit


def build_backbone(config: ModelConfig, drop_path_rate: float = 0.0) -> nn.Module:
    """The backbone named by ``config.arch``; it exposes ``embed_dim``."""
    if config.arch == "resnet50":
        return build_resnet50()
    return build_vit(
        config.arch,
        patch_size=config.patch_size,
        img_size=config.img_size,
        drop_path_rate=drop_path_rate,
        depth=config.depth,
    )


def build_network(config: ModelConfig, student: bool) -> MultiCropNetwork:
    """Backbone + DINO head; only the student gets drop-path."""
    backbone = build_backbone(config, drop_path_rate=config.drop_path if student else 0.0)
    head = DINOHead(
        backbone.embed_dim,
        out_dim=config.out_dim,
        hidden_dim=config.head_hidden_dim,
        bottleneck_dim=config.head_bottleneck_dim,
        use_bn=config.use_bn_in_head,
        norm_last_layer=config.norm_last_layer,
    )
    return MultiCropNetwork(backbone, head)


__all__ = [
    "DINOHead",
    "MultiCropNetwork",
    "ResNetBackbone",
    "VIT_SIZES",
    "ViTBackbone",
    "WeightNormLinear",
    "build_backbone",
    "build_network",
    "build_resnet50",
    "build_vit",
]
