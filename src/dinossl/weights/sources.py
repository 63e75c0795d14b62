"""Where weights come from: a local file, a URL or a released-model name, read safely and
split into backbone and head tensors."""

from __future__ import annotations

from pathlib import Path

import torch

from dinossl.errors import CheckpointError
from dinossl.safe_files import read_weights_file
from dinossl.weights.layout import NetworkWeights, check_which, pick_network
from dinossl.weights.registry import RELEASED, fetch, is_url


def local_file(source: str | Path) -> Path:
    """``source`` as a local path; a URL or a released-model name (``dino_vits16`` ...) is
    fetched by :func:`dinossl.weights.registry.fetch` into the torch hub cache (once)."""
    if isinstance(source, str) and not Path(source).exists() and (is_url(source) or source in RELEASED):
        return fetch(source)
    return Path(source)


def read_network_weights(path: str | Path, which: str = "teacher") -> NetworkWeights:
    """Backbone and head tensors of ``path`` (a file, URL or released-model name); ``which``
    picks the network of a training checkpoint."""
    check_which(which)  # before any download
    return pick_network(read_weights_file(local_file(path)), which, str(path))


def read_backbone_state(path: str | Path, which: str = "teacher") -> dict[str, torch.Tensor]:
    """Backbone tensors of a weights file in the released layout (prefixes removed, head dropped).

    ``which`` picks the ``teacher`` (default) or ``student`` network of a training checkpoint.
    """
    weights = read_network_weights(path, which)
    if not weights.backbone:
        raise CheckpointError(f"{path}: the {which} network has no backbone tensors")
    return weights.backbone
