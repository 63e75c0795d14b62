"""Training checkpoints: what they hold, written atomically, read safely, restored into a
:class:`~dinossl.train.distiller.Distiller`; and the teacher backbone exported at the end.

A checkpoint is a dict in the reference layout: ``student`` and ``teacher`` state dicts
(``backbone.*`` / ``head.*``), ``optimizer``, ``epoch`` (epochs completed), ``dino_loss``
(``center``, 1 x K) and ``fp16_scaler``, plus ``config`` (a plain dict instead of the
reference's pickled argparse Namespace), ``step``, ``world_size`` and ``global_batch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dinossl.config import Config
from dinossl.errors import CheckpointError
from dinossl.safe_files import read_weights_file, write_atomic
from dinossl.train.distiller import Distiller
from dinossl.weights import write_backbone

CHECKPOINT_NAME = "checkpoint.pth"
KEPT_CHECKPOINT = "checkpoint{epoch:04d}.pth"  # train.keep_every: the reference's saveckp_freq names
EXPORT_STEM = "teacher_backbone"
EXPORT_FORMATS = ("pth", "safetensors")


def training_state(distiller: Distiller, config: Config, epochs_done: int, steps_per_epoch: int,
                   world_size: int, global_batch: int) -> dict[str, Any]:
    """The checkpoint of a run after ``epochs_done`` epochs."""
    return {
        **distiller.state_dict(),
        "epoch": epochs_done,
        "step": epochs_done * steps_per_epoch,
        "config": config.to_dict(),
        "world_size": world_size,
        "global_batch": global_batch,
    }


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


def restore_training_state(distiller: Distiller, checkpoint: dict[str, Any], source: str | Path) -> int:
    """Load a checkpoint into ``distiller``; returns the number of epochs it had completed."""
    try:
        distiller.load_state_dict(checkpoint, str(source))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{source} does not fit this model ({str(exc).splitlines()[0]})") from exc
    return int(checkpoint["epoch"])


def backbone_state_dict(network_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``backbone.*`` entries of a student/teacher state dict, prefix removed."""
    prefix = "backbone."
    return {k[len(prefix):]: v for k, v in network_state.items() if k.startswith(prefix)}


def export_teacher_backbone(distiller: Distiller, output_dir: str | Path) -> list[Path]:
    """Write the teacher's backbone as ``teacher_backbone.pth`` and ``.safetensors`` in the run
    folder (replacing an earlier export of the same run)."""
    state = backbone_state_dict(distiller.teacher.state_dict())
    stem = Path(output_dir) / EXPORT_STEM
    return [write_backbone(state, stem.with_suffix(f".{fmt}"), fmt, overwrite=True) for fmt in EXPORT_FORMATS]
