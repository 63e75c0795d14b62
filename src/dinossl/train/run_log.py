"""What a run reports: JSON lines, TensorBoard scalars and console messages (rank 0 only)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from dinossl.optional import available, require
from dinossl.train.experiment_loggers import Tracker

log = logging.getLogger("dinossl")

LOG_NAME = "log.jsonl"


class RunLog:
    """Appends one JSON object per record to ``log.jsonl`` and mirrors numbers to TensorBoard.

    Records have a ``kind``: ``step`` (every ``train.log_every`` steps), ``epoch``,
    ``warning``, ``knn`` or ``result``. Disabled (a no-op) on ranks other than 0. A ``tracker``
    (W&B, MLflow) also gets every record and picture.
    """

    def __init__(self, output_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 tracker: Optional[Tracker] = None) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / LOG_NAME
        self.tracker = tracker if enabled else None
        self._writer = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard and available("tensorboard"):
                writer_class = require("torch.utils.tensorboard", "TensorBoard logging").SummaryWriter
                self._writer = writer_class(log_dir=str(Path(output_dir) / "tensorboard"))
            elif tensorboard:
                log.info("TensorBoard logging is off (log.jsonl has every record): pip install 'dinossl[tensorboard]'")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, allow_nan=True) + "\n")
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
