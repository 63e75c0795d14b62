"""Backbones (timm ViT, torchvision ResNet-50), the DINO head, the multi-crop network and the
factory that builds them (:mod:`dinossl.models.factory`)."""

from dinossl.models.factory import (
    BackboneSpec,
    backbone_spec,
    build_backbone,
    build_network,
    spec_of,
)
from dinossl.models.head import DINOHead, WeightNormLinear
from dinossl.models.linear_probe import LinearProbe, probe_features
from dinossl.models.multicrop import MultiCropNetwork
from dinossl.models.predictor import Predictor
from dinossl.models.resnet import ResNetBackbone, build_resnet50
from dinossl.models.vit import VIT_SIZES, ViTBackbone, build_vit

__all__ = [
    "VIT_SIZES",
    "BackboneSpec",
    "DINOHead",
    "LinearProbe",
    "MultiCropNetwork",
    "Predictor",
    "ResNetBackbone",
    "ViTBackbone",
    "WeightNormLinear",
    "backbone_spec",
    "build_backbone",
    "build_network",
    "build_resnet50",
    "build_vit",
    "probe_features",
    "spec_of",
]
