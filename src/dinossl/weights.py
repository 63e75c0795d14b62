"""Read backbone weights from any file the project or the reference DINO code writes.

Accepted: backbone-only state dicts (released DINO files, timm ``*.dino`` state dicts,
``dino export`` output) as ``.pth`` or ``.safetensors``, and full training checkpoints
(``teacher``/``student`` entries, ``module.``/``backbone.`` prefixes, head entries ignored).
Files are read with ``weights_only=True`` or from safetensors: never by running code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from dinossl.errors import CheckpointError
from dinossl.train.checkpoint import read_checkpoint

_PREFIXES = ("module.", "backbone.", "_orig_mod.")


@dataclass(frozen=True)
class BackboneSpec:
    """Architecture inferred from a state dict."""

    arch: str  # vit_tiny | vit_small | vit_base | resnet50
    patch_size: int = 16
    img_size: int = 224
    depth: Optional[int] = None


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        while key.startswith(_PREFIXES):
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
        out[key] = value
    return out


def read_backbone_state(path: str | Path, which: str = "teacher") -> dict[str, torch.Tensor]:
    """Backbone tensors of a weights file, prefixes removed, head entries dropped.

    ``which`` picks the ``teacher`` (default) or ``student`` network of a full checkpoint.
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    else:
        state = read_checkpoint(path)
    if isinstance(state, dict) and which in state and isinstance(state[which], dict):
        state = state[which]
    elif isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors (nor a 'teacher'/'student' entry)")
    state = _strip(state)
    return {k: v for k, v in state.items() if not k.startswith("head.") and k != "head"}


def infer_spec(state: dict[str, torch.Tensor]) -> BackboneSpec:
    """Architecture, patch size, position-embedding size and depth from tensor shapes."""
    from dinossl.models.vit import VIT_SIZES

    if "patch_embed.proj.weight" in state:
        dim, _, patch, _ = state["patch_embed.proj.weight"].shape
        arch = next((name for name, (width, _) in VIT_SIZES.items() if width == dim), None)
        if arch is None:
            raise CheckpointError(f"ViT width {dim} is not one of {sorted(w for w, _ in VIT_SIZES.values())}")
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5)) if "pos_embed" in state else 224 // patch
        return BackboneSpec(arch, patch_size=int(patch), img_size=grid * int(patch), depth=depth)
    if "conv1.weight" in state and "layer4.0.conv1.weight" in state:
        return BackboneSpec("resnet50")
    raise CheckpointError("cannot tell the architecture: no patch_embed.proj.weight (ViT) nor conv1/layer4 (ResNet) keys")


def build_from_spec(spec: BackboneSpec) -> nn.Module:
    from dinossl.models import build_resnet50, build_vit

    if spec.arch == "resnet50":
        return build_resnet50()
    return build_vit(spec.arch, patch_size=spec.patch_size, img_size=spec.img_size, depth=spec.depth)


def load_state_strict(backbone: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load with exact key and shape checking; one error naming every offending key."""
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(state) & set(expected) if state[k].shape != expected[k].shape
    )
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if keys:
            shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{source} does not fit the {type(backbone).__name__}: " + "; ".join(problems))
    backbone.load_state_dict(state, strict=True)


def load_backbone(path: str | Path, which: str = "teacher", spec: Optional[BackboneSpec] = None) -> nn.Module:
    """A backbone (in eval mode) built for and loaded from ``path``; architecture inferred
    from the tensors unless ``spec`` is given."""
    state = read_backbone_state(path, which)
    spec = spec or infer_spec(state)
    backbone = build_from_spec(spec)
    load_state_strict(backbone, state, source=str(path))
    return backbone.eval()


def load_backbone_into(backbone: nn.Module, path: str | Path, which: str = "teacher") -> None:
    """Load ``path``'s backbone weights into an existing backbone (strict)."""
    load_state_strict(backbone, read_backbone_state(path, which), source=str(path))
