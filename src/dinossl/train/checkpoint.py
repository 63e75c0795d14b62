"""Training checkpoints: what they hold, written atomically, read safely, restored into a
:class:`~dinossl.train.distiller.Distiller`; and the teacher backbone exported at the end.

A checkpoint is a dict in the reference layout: ``student`` and ``teacher`` state dicts
(``backbone.*`` / ``head.*``), ``optimizer``, ``epoch`` (epochs completed), ``dino_loss``
(``center``, 1 x K) and ``fp16_scaler``, plus ``config`` (a plain dict instead of the
reference's pickled argparse Namespace), ``step``, ``world_size``, ``global_batch`` and
``log_position`` (the length of ``log.jsonl`` when it was written) and ``data``, the training
set's fingerprint (:mod:`dinossl.data.fingerprint`), which a resume compares with the data it finds.

A checkpoint written inside an epoch (``train.checkpoint_every_steps``, or on SIGTERM/SIGUSR1)
also holds ``epoch_step`` (steps done in the unfinished epoch ``epoch`` + 1) and ``mid_epoch``:
per process, the step RNG state (drop path) and the epoch's running statistics, plus the
collapse monitor's counters; with them a resumed run computes bit for bit what the
uninterrupted run computes. ``epoch`` always counts completed epochs, as in the reference.

Each checkpoint has a ``checkpoint.pth.sha256`` beside it, replaced together with it
(:func:`dinossl.safe_files.write_atomic`) and checked whenever it is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from dinossl.config import Config
from dinossl.errors import CheckpointError
from dinossl.safe_files import read_weights_file, remove_stale_temporaries, write_atomic
from dinossl.train.distiller import Distiller
from dinossl.weights import write_backbone

CHECKPOINT_NAME = "checkpoint.pth"
KEPT_CHECKPOINT = "checkpoint{epoch:04d}.pth"  # train.keep_every: the reference's saveckp_freq names
EXPORT_STEM = "teacher_backbone"
EXPORT_FORMATS = ("pth", "safetensors")


def training_state(distiller: Distiller, config: Config, epochs_done: int, steps_per_epoch: int,
                   world_size: int, global_batch: int, epoch_step: int = 0, log_position: int = 0,
                   mid_epoch: Optional[dict[str, Any]] = None, data: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The checkpoint of a run after ``epochs_done`` epochs and ``epoch_step`` steps of the next
    one (``mid_epoch``: what the unfinished epoch needs to continue exactly; ``data``: the
    fingerprint record of the training set)."""
    state = {
        **distiller.state_dict(),
        "epoch": epochs_done,
        "step": epochs_done * steps_per_epoch + epoch_step,
        "config": config.to_dict(),
        "world_size": world_size,
        "global_batch": global_batch,
        "log_position": log_position,
    }
    if data is not None:
        state["data"] = data
    if epoch_step:
        state["epoch_step"] = epoch_step
        state["mid_epoch"] = mid_epoch or {}
    return state


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """torch.save ``state`` atomically, with its SHA-256 record beside it. Written through an
    open file, so that a full disk surfaces as ENOSPC (a StorageError) and not as torch's zip
    writer error; the previous checkpoint stays intact either way."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)

    write_atomic(path, write, digest=True)


def remove_interrupted_writes(output_dir: str | Path) -> list[Path]:
    """Delete the temporary files of checkpoint and export writes that a kill interrupted."""
    folder = Path(output_dir)
    removed = remove_stale_temporaries(folder / CHECKPOINT_NAME)
    for fmt in EXPORT_FORMATS:
        removed += remove_stale_temporaries(folder / f"{EXPORT_STEM}.{fmt}")
    return removed


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
