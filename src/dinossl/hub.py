"""Ready models from the released DINO weights (or any compatible file or URL), the same
builders ``hubconf.py`` gives ``torch.hub.load``.

>>> from dinossl import hub
>>> model = hub.dino_vits16()                      # released weights, downloaded once (eval mode)
>>> model = hub.dino_vits16("dino_deitsmall16_pretrain.pth")   # or a local file, URL, hf-hub:...
>>> model = hub.dino_vits16(pretrained=False, drop_path_rate=0.1)   # random init; kwargs to the backbone
>>> features = model(images)                        # (B, 3, H, W) -> (B, 384) [CLS] features
>>> classifier = hub.dino_vits16_lc()               # + the reference's ImageNet linear head: (B, 1000)

``pretrained``: True (the released file), False (random initialisation), or a source (path,
URL, ``hf-hub:ORG/NAME``, released name). Keyword arguments go to the backbone's constructor
(timm's ``VisionTransformer`` or torchvision's ``ResNet``); ``num_classes=N`` adds a new linear
classifier. Every model carries ``pretrained_cfg`` (DINO's evaluation transform) for
``timm.data.resolve_data_config``.

A thin face over :mod:`dinossl.weights`: the released models and downloads live in
:mod:`dinossl.weights.registry`, strict loading in :mod:`dinossl.weights.loading`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from torch import nn

from dinossl.models import BackboneSpec, LinearProbe, build_backbone
from dinossl.weights.linear_head import read_linear_head
from dinossl.weights.loading import load_backbone, load_state_strict
from dinossl.weights.registry import RELEASED, DownloadError, Released, cache_path, download, fetch, is_url
from dinossl.weights.sources import local_file

__all__ = [
    "RELEASED", "DownloadError", "Released", "backbone", "cache_path", "dino_resnet50", "dino_resnet50_lc",
    "dino_vitb16", "dino_vitb16_lc", "dino_vitb8", "dino_vitb8_lc", "dino_vits16", "dino_vits16_lc", "dino_vits8",
    "dino_vits8_lc", "download", "fetch", "is_url", "linear_classifier", "load",
]

IMAGENET_CLASSES = 1000
Pretrained = bool | str | Path


def load(source: str | Path, which: str = "teacher", spec: Optional[BackboneSpec] = None,
         cache_dir: Optional[str | Path] = None) -> nn.Module:
    """A backbone in eval mode from a path, URL, ``hf-hub:`` name or released-model name; the
    architecture is the released one for a name, else ``spec`` or inferred from the tensors."""
    if spec is None and isinstance(source, str) and source in RELEASED:
        spec = RELEASED[source].spec
    return load_backbone(local_file(source, cache_dir), which=which, spec=spec)


def _spec(release: Released, kwargs: dict[str, Any]) -> BackboneSpec:
    """The release's spec, with any ``img_size`` / ``patch_size`` / ``depth`` of ``kwargs`` taken out."""
    fields = {name: kwargs.pop(name) for name in ("img_size", "patch_size", "depth") if name in kwargs}
    return dataclasses.replace(release.spec, **fields) if fields else release.spec


def backbone(name: str, pretrained: Pretrained = True, cache_dir: Optional[str | Path] = None,
             **kwargs: Any) -> nn.Module:
    """The released model ``name`` (``dino_vits16`` ...) in eval mode; see the module docstring."""
    release = RELEASED[name]
    num_classes = int(kwargs.pop("num_classes", 0) or 0)
    spec = _spec(release, kwargs)
    if pretrained is False:
        model = build_backbone(spec, **kwargs)
    else:
        source = release.url if pretrained is True else pretrained
        model = load_backbone(local_file(source, cache_dir), spec=spec, **kwargs)
    if num_classes:
        model.reset_classifier(num_classes)
    return model.eval()


def linear_classifier(name: str, pretrained: Pretrained = True, cache_dir: Optional[str | Path] = None,
                      **kwargs: Any) -> LinearProbe:
    """The released backbone ``name`` with the reference's ImageNet linear head on the features
    it was trained on: (B, 3, H, W) -> (B, 1000) logits, eval mode. ``pretrained``: True (both
    released files), False (random initialisation) or a linear-head source (the backbone is
    then the released one)."""
    release = RELEASED[name]
    model = backbone(name, pretrained is not False, cache_dir, **kwargs)
    dim = model.embed_dim * (release.n_last_blocks + int(release.avgpool))
    probe = LinearProbe(model, dim, IMAGENET_CLASSES, release.n_last_blocks, release.avgpool)
    if pretrained is not False:
        source = release.linear_url if pretrained is True else pretrained
        head = read_linear_head(source, release.n_last_blocks, release.avgpool, cache_dir)
        load_state_strict(probe.linear, {"weight": head.weight, "bias": head.bias}, str(source))
    return probe.eval()


def dino_vits16(pretrained: Pretrained = True, cache_dir: Optional[str | Path] = None, **kwargs: Any) -> nn.Module:
    """ViT-S/16 DINO backbone, eval mode: (B, 3, H, W) -> (B, 384) [CLS] features."""
    return backbone("dino_vits16", pretrained, cache_dir, **kwargs)


def dino_vits8(pretrained: Pretrained = True, cache_dir: Optional[str | Path] = None, **kwargs: Any) -> nn.Module:
    """ViT-S/8 DINO backbone, eval mode: (B, 3, H, W) -> (B, 384)."""
    return backbone("dino_vits8", pretrained, cache_dir, **kwargs)


def dino_vitb16(pretrained: Pretrained = True, cache_dir: Optional[str | Path] = None, **kwargs: Any) -> nn.Module:
    """ViT-B/16 DINO backbone, eval mode: (B, 3, H, W) -> (B, 768)."""
    return backbone("dino_vitb16", pretrained, cache_dir, **kwargs)


def dino_vitb8(pretrained: Pretrained = True, cache_dir: Optional[str | Path] = None, **kwargs: Any) -> nn.Module:
    """ViT-B/8 DINO backbone, eval mode: (B, 3, H, W) -> (B, 768)."""
    return backbone("dino_vitb8", pretrained, cache_dir, **kwargs)


def dino_resnet50(pretrained: Pretrained = True, cache_dir: Optional[str | Path] = None, **kwargs: Any) -> nn.Module:
    """ResNet-50 DINO backbone (fc removed), eval mode: (B, 3, H, W) -> (B, 2048)."""
    return backbone("dino_resnet50", pretrained, cache_dir, **kwargs)


def dino_vits16_lc(pretrained: Pretrained = True, cache_dir: Optional[str | Path] = None,
                   **kwargs: Any) -> LinearProbe:
    """ViT-S/16 + the reference's linear head on 4 [CLS] tokens: (B, 3, H, W) -> (B, 1000)."""
    return linear_classifier("dino_vits16", pretrained, cache_dir, **kwargs)


def dino_vits8_lc(pretrained: Pretrained = True, cache_dir: Optional[str | Path] = None,
                  **kwargs: Any) -> LinearProbe:
    """ViT-S/8 + the reference's linear head on 4 [CLS] tokens: (B, 3, H, W) -> (B, 1000)."""
    return linear_classifier("dino_vits8", pretrained, cache_dir, **kwargs)


def dino_vitb16_lc(pretrained: Pretrained = True, cache_dir: Optional[str | Path] = None,
                   **kwargs: Any) -> LinearProbe:
    """ViT-B/16 + the reference's linear head on [CLS] and the mean patch token: (B, 3, H, W) -> (B, 1000)."""
    return linear_classifier("dino_vitb16", pretrained, cache_dir, **kwargs)


def dino_vitb8_lc(pretrained: Pretrained = True, cache_dir: Optional[str | Path] = None,
                  **kwargs: Any) -> LinearProbe:
    """ViT-B/8 + the reference's linear head on [CLS] and the mean patch token: (B, 3, H, W) -> (B, 1000)."""
    return linear_classifier("dino_vitb8", pretrained, cache_dir, **kwargs)


def dino_resnet50_lc(pretrained: Pretrained = True, cache_dir: Optional[str | Path] = None,
                     **kwargs: Any) -> LinearProbe:
    """ResNet-50 + the reference's linear head on the pooled features: (B, 3, H, W) -> (B, 1000)."""
    return linear_classifier("dino_resnet50", pretrained, cache_dir, **kwargs)
