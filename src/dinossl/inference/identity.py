"""What a backbone is, for results files and feature caches: the weights' identity (file
path, size and modification time, or the released name / URL; the file's SHA-256 on request)
and the architecture."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from torch import nn

from dinossl.errors import CheckpointError
from dinossl.safe_files import file_sha256


def file_identity(path: str | Path) -> dict[str, Any]:
    """What identifies a weights file's content cheaply: resolved path, size, modification time."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def local_weights(weights: str | Path) -> Path | None:
    """The weights as a local file, None for a released name, URL or hub name."""
    path = Path(weights)
    return path if path.is_file() else None


def weights_identity(weights: str | Path, which: str = "teacher") -> dict[str, Any]:
    """The file's identity (see :func:`file_identity`) or ``{"source": name}``, and the network."""
    local = local_weights(weights)
    source = file_identity(local) if local is not None else {"source": str(weights)}
    return {**source, "which": which}


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def weights_sha256(weights: str | Path) -> str | None:
    """Hex SHA-256 of a local weights file (read once per file version), None for other sources."""
    local = local_weights(weights)
    if local is None:
        return None
    identity = file_identity(local)
    return _sha256(identity["path"], identity["bytes"], identity["mtime_ns"])


def require_vit(backbone: nn.Module) -> int:
    """The patch size of a ViT backbone; CheckpointError for a backbone without attention (ResNet)."""
    patch_size = getattr(backbone, "patch_size", None)
    if not hasattr(backbone, "last_selfattention") or not isinstance(patch_size, int):
        raise CheckpointError(f"a {type(backbone).__name__} backbone has no self-attention or patch tokens; "
                              "attention maps and video segmentation need a ViT checkpoint")
    return patch_size


def describe_backbone(backbone: nn.Module) -> dict[str, Any]:
    """Architecture facts for the results file: class, parameter count, width, patch size, depth."""
    info: dict[str, Any] = {"class": type(backbone).__name__,
                            "parameters": sum(p.numel() for p in backbone.parameters())}
    for attr in ("embed_dim", "patch_size"):
        if hasattr(backbone, attr):
            info[attr] = int(getattr(backbone, attr))
    if hasattr(backbone, "blocks"):
        info["depth"] = len(backbone.blocks)
    return info
