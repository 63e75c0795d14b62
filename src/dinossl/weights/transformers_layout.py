"""The Hugging Face ``transformers`` layout of a DINO ViT (``facebook/dino-vits16`` ...: a
``ViTModel``), converted key for key into the released layout on reading.

========================================================  ===============================
transformers                                              released (timm) layout
========================================================  ===============================
``embeddings.cls_token``                                  ``cls_token``
``embeddings.position_embeddings``                        ``pos_embed``
``embeddings.patch_embeddings.projection.*``              ``patch_embed.proj.*``
``encoder.layer.N.layernorm_before.*``                    ``blocks.N.norm1.*``
``encoder.layer.N.attention.attention.{query,key,value}`` ``blocks.N.attn.qkv`` (stacked q, k, v)
``encoder.layer.N.attention.output.dense.*``              ``blocks.N.attn.proj.*``
``encoder.layer.N.layernorm_after.*``                     ``blocks.N.norm2.*``
``encoder.layer.N.intermediate.dense.*``                  ``blocks.N.mlp.fc1.*``
``encoder.layer.N.output.dense.*``                        ``blocks.N.mlp.fc2.*``
``layernorm.*``                                           ``norm.*``
========================================================  ===============================

A ``vit.`` prefix (a ``ViTFor...`` model) is removed. ``pooler.dense.*``, the pooling layer
``transformers`` adds to a ``ViTModel`` by default and that DINO does not have, is left out.
Every other key is refused, naming it (a classifier head included).
"""

from __future__ import annotations

import re

import torch

from dinossl.errors import CheckpointError
from dinossl.weights.layout import name_keys

_FIXED = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_BLOCK = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_QKV = ("query", "key", "value")
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)")
_LEFT_OUT = ("pooler.dense.weight", "pooler.dense.bias")


def _strip(key: str) -> str:
    return key[len("vit."):] if key.startswith("vit.") else key


def is_transformers_vit(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is in the ``transformers`` ViT layout."""
    return any(_strip(k).startswith(("embeddings.", "encoder.layer.")) for k in state)


def from_transformers_vit(state: dict[str, torch.Tensor], source: str = "weights") -> dict[str, torch.Tensor]:
    """The released-layout backbone state dict of a ``transformers`` ViT state dict (same
    tensors; q, k and v stacked into ``qkv``). Unknown keys raise one CheckpointError naming them."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, value in state.items():
        name = _strip(key)
        if name in _FIXED:
            out[_FIXED[name]] = value
            continue
        if name in _LEFT_OUT:
            continue
        match = _LAYER.fullmatch(name)
        if match is None:
            unknown.append(key)
            continue
        index, part, kind = int(match.group(1)), match.group(2), match.group(3)
        if part in _BLOCK:
            out[f"blocks.{index}.{_BLOCK[part]}.{kind}"] = value
        elif part.startswith("attention.attention.") and part.rsplit(".", 1)[1] in _QKV:
            qkv.setdefault((index, kind), {})[part.rsplit(".", 1)[1]] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: keys of the transformers ViT layout that a DINO backbone does not have: "
                              f"{name_keys(unknown)}")
    for (index, kind), parts in sorted(qkv.items()):
        absent = [p for p in _QKV if p not in parts]
        if absent:
            raise CheckpointError(f"{source}: encoder.layer.{index} has no attention {', '.join(absent)} {kind}")
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in _QKV], dim=0)
    return out
