"""The one place backbones and DINO networks are built: from a :class:`BackboneSpec`, from the
``model`` config section, or like an existing backbone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from dinossl.config import ModelConfig
from dinossl.models.head import DINOHead
from dinossl.models.multicrop import MultiCropNetwork
from dinossl.models.predictor import Predictor
from dinossl.models.resnet import ResNetBackbone, build_resnet50
from dinossl.models.vit import VIT_SIZES, ViTBackbone, build_vit


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone architecture; field names are those of the ``model`` config section."""

    arch: str  # vit_tiny | vit_small | vit_base | resnet50
    patch_size: int = 16
    img_size: int = 224  # size the position embeddings are laid out for
    depth: Optional[int] = None  # None: 12

    def describe(self) -> str:
        if self.arch == "resnet50":
            return "resnet50"
        return f"{self.arch}/{self.patch_size} (depth {self.depth or 12}, img_size {self.img_size})"

    def as_overrides(self) -> str:
        """The config overrides that build this backbone."""
        if self.arch == "resnet50":
            return "model.arch=resnet50"
        return (f"model.arch={self.arch} model.patch_size={self.patch_size} "
                f"model.img_size={self.img_size} model.depth={self.depth or 12}")


def backbone_spec(config: ModelConfig) -> BackboneSpec:
    """The backbone the ``model`` config section describes."""
    if config.arch == "resnet50":
        return BackboneSpec("resnet50")
    return BackboneSpec(config.arch, config.patch_size, config.img_size, config.depth)


def build_backbone(spec: BackboneSpec, drop_path_rate: float = 0.0, **options: Any) -> nn.Module:
    """A randomly initialised backbone (it exposes ``embed_dim``); drop-path applies to ViTs;
    ``options`` go to timm's ``VisionTransformer`` or torchvision's ``ResNet``."""
    if spec.arch == "resnet50":
        return build_resnet50(**options)
    return build_vit(spec.arch, patch_size=spec.patch_size, img_size=spec.img_size,
                     drop_path_rate=drop_path_rate, depth=spec.depth, **options)


def spec_of(backbone: nn.Module) -> Optional[BackboneSpec]:
    """The spec of a built backbone (None for a module this package does not build)."""
    if isinstance(backbone, ResNetBackbone):
        return BackboneSpec("resnet50")
    if isinstance(backbone, ViTBackbone):
        arch = next((n for n, (w, _) in VIT_SIZES.items() if w == backbone.embed_dim), f"vit{backbone.embed_dim}")
        grid = int(round((backbone.pos_embed.shape[1] - 1) ** 0.5))
        return BackboneSpec(arch, backbone.patch_size, grid * backbone.patch_size, len(backbone.blocks))
    return None


def build_network(config: ModelConfig, student: bool) -> MultiCropNetwork:
    """Backbone + DINO head; only the student gets drop-path, and the predictor when
    ``model.predictor`` asks for one."""
    backbone = build_backbone(backbone_spec(config), drop_path_rate=config.drop_path if student else 0.0)
    head = DINOHead(
        backbone.embed_dim,
        out_dim=config.out_dim,
        hidden_dim=config.head_hidden_dim,
        bottleneck_dim=config.head_bottleneck_dim,
        use_bn=config.use_bn_in_head,
        norm_last_layer=config.norm_last_layer,
    )
    predictor = Predictor(config.out_dim, config.head_hidden_dim) if student and config.predictor else None
    return MultiCropNetwork(backbone, head, predictor)
