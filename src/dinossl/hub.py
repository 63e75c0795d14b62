"""Ready backbones from the released DINO weights (or any compatible file or URL).

>>> from dinossl import hub
>>> model = hub.dino_vits16()                        # downloads into the torch hub cache
>>> model = hub.dino_vits16("dino_deitsmall16_pretrain.pth")   # or a local file
>>> features = model(images)                          # (B, 3, H, W) -> (B, 384) [CLS] features

A thin face over :mod:`dinossl.weights`: the released models and downloads live in
:mod:`dinossl.weights.registry`, strict loading in :mod:`dinossl.weights.loading`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from torch import nn

from dinossl.models import BackboneSpec
from dinossl.weights.loading import load_backbone
from dinossl.weights.registry import RELEASED, DownloadError, Released, cache_path, download, fetch, is_url

__all__ = [
    "RELEASED", "DownloadError", "Released", "cache_path", "dino_resnet50", "dino_vitb16", "dino_vitb8",
    "dino_vits16", "dino_vits8", "download", "fetch", "is_url", "load",
]


def load(source: str | Path, which: str = "teacher", spec: Optional[BackboneSpec] = None,
         cache_dir: Optional[str | Path] = None) -> nn.Module:
    """A backbone in eval mode from a path, URL or released-model name; the architecture is
    the released one for a name, else ``spec`` or inferred from the tensors."""
    if spec is None and isinstance(source, str) and source in RELEASED:
        spec = RELEASED[source].spec
    return load_backbone(fetch(source, cache_dir), which=which, spec=spec)


def _released(name: str, source: Optional[str | Path], cache_dir: Optional[str | Path]) -> nn.Module:
    release = RELEASED[name]
    return load_backbone(fetch(source or release.url, cache_dir), spec=release.spec)


def dino_vits16(source: Optional[str | Path] = None, cache_dir: Optional[str | Path] = None) -> nn.Module:
    """ViT-S/16 DINO backbone, eval mode: (B, 3, H, W) -> (B, 384). ``source``: path or URL
    (default: the released weights)."""
    return _released("dino_vits16", source, cache_dir)


def dino_vits8(source: Optional[str | Path] = None, cache_dir: Optional[str | Path] = None) -> nn.Module:
    """ViT-S/8 DINO backbone, eval mode: (B, 3, H, W) -> (B, 384)."""
    return _released("dino_vits8", source, cache_dir)


def dino_vitb16(source: Optional[str | Path] = None, cache_dir: Optional[str | Path] = None) -> nn.Module:
    """ViT-B/16 DINO backbone, eval mode: (B, 3, H, W) -> (B, 768)."""
    return _released("dino_vitb16", source, cache_dir)


def dino_vitb8(source: Optional[str | Path] = None, cache_dir: Optional[str | Path] = None) -> nn.Module:
    """ViT-B/8 DINO backbone, eval mode: (B, 3, H, W) -> (B, 768)."""
    return _released("dino_vitb8", source, cache_dir)


def dino_resnet50(source: Optional[str | Path] = None, cache_dir: Optional[str | Path] = None) -> nn.Module:
    """ResNet-50 DINO backbone (fc removed), eval mode: (B, 3, H, W) -> (B, 2048)."""
    return _released("dino_resnet50", source, cache_dir)
