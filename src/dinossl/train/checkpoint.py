"""Training checkpoints: saved atomically, read safely, and the released-weights export.

A checkpoint is a dict in the reference layout: ``student`` and ``teacher`` state dicts
(``backbone.*`` / ``head.*``), ``optimizer``, ``epoch`` (epochs completed), ``dino_loss``
(``center``, 1 x K) and ``fp16_scaler``, plus ``config`` (a plain dict instead of the
reference's pickled argparse Namespace), ``step`` and ``world_size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dinossl.errors import CheckpointError
from dinossl.safe_files import read_weights_file, write_atomic

__all__ = [
    "CHECKPOINT_NAME", "backbone_state_dict", "export_backbone", "read_checkpoint", "save_checkpoint",
    "write_atomic",  # lives in dinossl.safe_files; still importable from here
]

CHECKPOINT_NAME = "checkpoint.pth"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """torch.save ``state`` atomically."""
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint as tensors and plain data, never code (:func:`dinossl.safe_files.read_weights_file`).

    A file that would need arbitrary unpickling (a crafted file, or an object the safe
    loader does not know) is refused with a CheckpointError. The reference's pickled ``args``
    is read as an inert :class:`~dinossl.safe_files.ForeignObject`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return read_weights_file(path)


def backbone_state_dict(network_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``backbone.*`` entries of a student/teacher state dict, prefix removed."""
    prefix = "backbone."
    return {k[len(prefix):]: v for k, v in network_state.items() if k.startswith(prefix)}


def export_backbone(state: dict[str, torch.Tensor], path_stem: str | Path) -> list[Path]:
    """Write ``<stem>.pth`` (plain state dict) and ``<stem>.safetensors``, atomically."""
    stem = Path(path_stem)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    pth, safe = stem.with_suffix(".pth"), stem.with_suffix(".safetensors")
    write_atomic(pth, lambda tmp: torch.save(tensors, tmp))
    write_atomic(safe, lambda tmp: save_file(tensors, tmp))
    return [pth, safe]
