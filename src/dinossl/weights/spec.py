"""Architectures inferred from tensor shapes: the backbone's :class:`~dinossl.models.BackboneSpec`
and the DINO head's sizes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import torch

from dinossl.errors import CheckpointError
from dinossl.models import VIT_SIZES, BackboneSpec
from dinossl.weights.layout import name_keys

_RESNET50_BLOCKS = (3, 4, 6, 3)


def infer_spec(state: dict[str, torch.Tensor]) -> BackboneSpec:
    """Architecture, patch size, position-grid size and depth of a backbone state dict."""
    if "patch_embed.proj.weight" in state:
        dim, _, patch, _ = state["patch_embed.proj.weight"].shape
        arch = next((name for name, (width, _) in VIT_SIZES.items() if width == dim), None)
        if arch is None:
            widths = ", ".join(f"{w} ({n})" for n, (w, _) in VIT_SIZES.items())
            raise CheckpointError(f"ViT width {dim} is not one of {widths}")
        blocks = [int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))]
        if not blocks:
            raise CheckpointError("ViT weights without any blocks.N.* keys")
        img_size = 224
        if "pos_embed" in state:
            tokens = state["pos_embed"].shape[1] - 1
            grid = int(round(tokens**0.5))
            if grid * grid != tokens:
                raise CheckpointError(f"pos_embed holds {tokens} patch positions, not a square grid")
            img_size = grid * int(patch)
        return BackboneSpec(arch, patch_size=int(patch), img_size=img_size, depth=1 + max(blocks))
    if "conv1.weight" in state and "layer4.0.conv1.weight" in state:
        counts = tuple(
            len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)
        )
        if counts != _RESNET50_BLOCKS or "layer1.0.conv3.weight" not in state:
            raise CheckpointError(f"a ResNet with {counts} blocks per stage is not a ResNet-50 {_RESNET50_BLOCKS}")
        return BackboneSpec("resnet50")
    raise CheckpointError(
        "cannot tell the architecture: no patch_embed.proj.weight (ViT) nor conv1/layer4 (ResNet-50) keys "
        f"(keys: {name_keys(list(state))})"
    )


@dataclass(frozen=True)
class HeadSpec:
    """DINO head sizes (arguments of :class:`~dinossl.models.DINOHead`)."""

    in_dim: int
    out_dim: int
    hidden_dim: int
    bottleneck_dim: int
    use_bn: bool
    norm_last_layer: bool


def infer_head_spec(head: dict[str, torch.Tensor], settings: Optional[dict[str, Any]] = None) -> HeadSpec:
    """Head sizes from its tensors: Linear weights are 2-D ``mlp.i.weight``, BatchNorms carry
    ``running_mean``. ``norm_last_layer`` comes from the run's settings, else from g == 1."""
    linears = sorted(
        int(m.group(1)) for k, v in head.items() if (m := re.fullmatch(r"mlp\.(\d+)\.weight", k)) and v.ndim == 2
    )
    use_bn = any(k.endswith(".running_mean") for k in head)
    if len(linears) != 3 or "last_layer.weight_v" not in head or "last_layer.weight_g" not in head:
        raise CheckpointError(
            f"the DINO head has {len(linears)} hidden Linear layers and "
            f"{'a' if 'last_layer.weight_v' in head else 'no'} weight-normalised last layer; this project's head "
            f"has 3 (reference nlayers=3) and last_layer.weight_g/weight_v (keys: {name_keys(list(head))})"
        )
    first, last = head[f"mlp.{linears[0]}.weight"], head[f"mlp.{linears[-1]}.weight"]
    settings = settings or {}
    norm = settings.get("norm_last_layer")
    if not isinstance(norm, bool):
        norm = bool(torch.all(head["last_layer.weight_g"] == 1))
    return HeadSpec(
        in_dim=first.shape[1], out_dim=head["last_layer.weight_v"].shape[0], hidden_dim=first.shape[0],
        bottleneck_dim=last.shape[0], use_bn=use_bn, norm_last_layer=norm,
    )
