"""What a run reports: JSON lines, TensorBoard scalars and console messages (rank 0 only).

Each checkpoint stores the length of ``log.jsonl`` when it was written (:meth:`RunLog.position`);
a resumed run first drops the training records written after that point
(:func:`rewind_log`), since it computes those steps again, so the log of a run resumed after
a kill reads like the log of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from dinossl.optional import available, require
from dinossl.safe_files import storage_error
from dinossl.train.experiment_loggers import Tracker

log = logging.getLogger("dinossl")

LOG_NAME = "log.jsonl"
# Records a resumed run writes again for the steps after its checkpoint; others (a monitor's
# result for an epoch that was checkpointed) stay.
REPEATED_KINDS = frozenset({"step", "epoch", "warning"})


def rewind_log(output_dir: str | Path, position: Optional[int]) -> int:
    """Drop the ``step``, ``epoch`` and ``warning`` records written after byte ``position`` of
    ``log.jsonl`` (a checkpoint's :meth:`RunLog.position`); returns how many were dropped.
    A line cut short by a kill is dropped too."""
    path = Path(output_dir) / LOG_NAME
    if position is None or not path.is_file() or path.stat().st_size <= position:
        return 0
    data = path.read_bytes()
    kept, dropped = [], 0
    for line in data[position:].splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if not line.endswith(b"\n") or not isinstance(record, dict) or record.get("kind") in REPEATED_KINDS:
            dropped += 1
        else:
            kept.append(line)
    with path.open("r+b") as handle:
        handle.seek(position)
        handle.write(b"".join(kept))
        handle.truncate()
    return dropped


def epoch_start_position(output_dir: str | Path, epoch: int, position: int) -> int:
    """The byte offset in ``log.jsonl`` of the first ``step`` record of ``epoch`` (1-based)
    before ``position``, or ``position`` when there is none: where to rewind to when that epoch
    is run again from its first step."""
    path = Path(output_dir) / LOG_NAME
    if not path.is_file():
        return position
    offset = 0
    for line in path.read_bytes()[:position].splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and record.get("kind") == "step" and record.get("epoch") == epoch:
            return offset
        offset += len(line)
    return position


class RunLog:
    """Appends one JSON object per record to ``log.jsonl`` and mirrors numbers to TensorBoard.

    Records have a ``kind``: ``step`` (every ``train.log_every`` steps), ``epoch``,
    ``warning``, ``knn`` or ``result``. Disabled (a no-op) on ranks other than 0. A ``tracker``
    (W&B, MLflow) also gets every record and picture.
    """

    def __init__(self, output_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 purge_step: Optional[int] = None, tracker: Optional[Tracker] = None) -> None:
        """``purge_step``: TensorBoard hides this run's earlier events from that step on (a
        resumed run's re-computed steps). ``tracker``: W&B or MLflow, which also get every record."""
        self.enabled = enabled
        self.path = Path(output_dir) / LOG_NAME
        self.tracker = tracker if enabled else None
        self._writer = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard and available("tensorboard"):
                writer_class = require("torch.utils.tensorboard", "TensorBoard logging").SummaryWriter
                self._writer = writer_class(log_dir=str(Path(output_dir) / "tensorboard"), purge_step=purge_step)
            elif tensorboard:
                log.info("TensorBoard logging is off (log.jsonl has every record): pip install 'dinossl[tensorboard]'")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        existed = self.path.is_file()
        try:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record, allow_nan=True) + "\n")
        except OSError as exc:  # a full disk, an output that became read-only: one line, not a traceback
            error = storage_error(self.path, exc, existed)
            if error is not None:
                raise error from exc
            raise
        if self._writer is not None:
            kind = record.get("kind", "step")
            x = record.get("step" if kind == "step" else "epoch", 0)
            for key, value in record.items():
                if key in ("kind", "step", "epoch") or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                if math.isfinite(value):
                    self._writer.add_scalar(f"{kind}/{key}", value, x)
        if self.tracker is not None:
            self.tracker.log(record)

    def image(self, name: str, picture: np.ndarray, epoch: int) -> None:
        """A (H, W, 3) uint8 picture to TensorBoard and the tracker (the caller writes its PNG)."""
        if not self.enabled:
            return
        if self._writer is not None:
            self._writer.add_image(name, picture, epoch, dataformats="HWC")
        if self.tracker is not None:
            self.tracker.log_image(name, picture, epoch)

    def position(self) -> int:
        """The length of ``log.jsonl`` in bytes (0 before the first record)."""
        return self.path.stat().st_size if self.path.is_file() else 0

    def warn(self, message: str, **fields: Any) -> None:
        """Console warning plus a ``warning`` record."""
        if not self.enabled:
            return
        log.warning(message)
        self.write({"kind": "warning", "message": message, **fields})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
