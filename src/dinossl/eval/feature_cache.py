"""Extracted features saved to disk and reloaded, so a sweep does not re-extract.

A cache entry is ``<dir>/<name>-<key>.safetensors`` holding ``features`` (N, D) float32 and
``labels`` (N,) int64, with the identity it was computed for (backbone file, network, feature
spec, transform, data folder) stored as JSON metadata. The key is a hash of that identity, so
different settings never overwrite each other, and a changed weights file (size or
modification time) or data folder (file count, classes) gives a new entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dinossl.errors import DataError
from dinossl.runtime.distributed import DistContext, all_reduce, barrier
from dinossl.safe_files import write_atomic

log = logging.getLogger("dinossl")

Features = tuple[torch.Tensor, torch.Tensor]


def cache_key(identity: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the identity's canonical JSON."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def save_features(path: str | Path, features: torch.Tensor, labels: torch.Tensor, identity: dict[str, Any]) -> None:
    """Write (N, D) features and (N,) labels with their identity, atomically."""
    tensors = {"features": features.float().contiguous().cpu(), "labels": labels.long().contiguous().cpu()}
    metadata = {"identity": json.dumps(identity, sort_keys=True)}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_features(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(features (N, D), labels (N,), identity) of a saved entry."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            identity = json.loads((handle.metadata() or {}).get("identity", "{}"))
            return handle.get_tensor("features"), handle.get_tensor("labels"), identity
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(f"{path}: not a readable feature file ({exc})") from exc


@dataclass(frozen=True)
class FeatureCache:
    """A folder of saved features for one backbone (``backbone`` identifies it in every key)."""

    folder: Path
    backbone: dict[str, Any]

    def path(self, name: str, identity: dict[str, Any]) -> Path:
        return Path(self.folder) / f"{name}-{cache_key(identity)}.safetensors"

    def get_or_compute(
        self, name: str, settings: dict[str, Any], compute: Callable[[], Features], ctx: Optional[DistContext] = None
    ) -> Features:
        """Load ``name``'s entry for these settings, or compute, save (main process) and return it.

        Under torchrun every process must call this together: the entry is used only when all
        processes see it, otherwise all of them compute (``compute`` may be collective).
        """
        identity = {"backbone": self.backbone, **settings}
        path = self.path(name, identity)
        device = ctx.device if ctx is not None and ctx.device.type == "cuda" else torch.device("cpu")
        present = torch.tensor([1.0 if path.is_file() else 0.0], device=device)
        if ctx is not None and ctx.distributed:
            all_reduce(present, "mean")
        if present.item() == 1.0:
            features, labels, stored = load_features(path)
            if stored == json.loads(json.dumps(identity, sort_keys=True)):
                log.info("features: reusing %s", path)
                return features, labels
            log.warning("features: %s was saved for other settings; extracting again", path)
        features, labels = compute()
        if ctx is None or ctx.is_main:
            save_features(path, features, labels, identity)
            log.info("features: saved %s", path)
        barrier()
        return features, labels
