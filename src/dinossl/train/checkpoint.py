"""Training checkpoints: atomic writes, safe reads, and the released-weights export.

A checkpoint is a dict in the reference layout: ``student`` and ``teacher`` state dicts
(``backbone.*`` / ``head.*``), ``optimizer``, ``epoch`` (epochs completed), ``dino_loss``
(``center``, 1 x K) and ``fp16_scaler``, plus ``config`` (a plain dict instead of the
reference's pickled argparse Namespace), ``step`` and ``world_size``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from dinossl.errors import CheckpointError

CHECKPOINT_NAME = "checkpoint.pth"


def write_atomic(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """torch.save ``state`` atomically."""
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data, never code.

    A file that would need arbitrary unpickling (a crafted file, or an object the safe
    loader does not know) is refused with a CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to unpickle, the file holds objects other than tensors and plain data "
            f"(loading it could run code): {first}"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})") from exc


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
