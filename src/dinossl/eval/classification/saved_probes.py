"""What the supervised probes leave in their output folder besides results.json: the best
linear head (``linear_head.safetensors`` + ``.json``) or fine-tuned network
(``finetuned.safetensors`` + ``.json``), rewritten whenever an epoch beats the best so far,
and the per-epoch checkpoint a killed probe resumes from
(:mod:`~dinossl.eval.classification.probe_checkpoint`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import save_file

from dinossl.errors import DinoError
from dinossl.eval.classification.linear import EpochEnd
from dinossl.eval.classification.probe_checkpoint import ProbeCheckpoint
from dinossl.safe_files import write_atomic
from dinossl.weights.linear_head import LinearHead, write_linear_head

log = logging.getLogger("dinossl")

NETWORK_NAME = "finetuned.safetensors"
NETWORK_INFO_NAME = "finetuned.json"


def resume_state(checkpoint: ProbeCheckpoint, overwrite: bool) -> Optional[dict[str, Any]]:
    """The state to resume from: the folder's checkpoint of this probe, None for a fresh start
    (none there, or one of other settings and ``overwrite``: it is replaced)."""
    try:
        state = checkpoint.read()
    except DinoError:
        if not overwrite:
            raise
        log.warning("%s belongs to a probe with other settings; starting again (--overwrite)", checkpoint.path)
        return None
    if state is not None:
        log.info("resuming from %s after epoch %d", checkpoint.path, int(state["epoch"]))
    return state


def _epoch_record(end: EpochEnd) -> dict[str, Any]:
    entry = end.state["history"][-1]
    return {k: entry[k] for k in ("epoch", "top1", "top5", "ema_top1", "ema_top5", "saved") if k in entry}


def write_network(folder: str | Path, state: dict[str, torch.Tensor], info: dict[str, Any]) -> Path:
    """The fine-tuned network (``backbone.*`` + ``head.*``) as safetensors plus a JSON record."""
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    write_atomic(folder / NETWORK_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(info, indent=2) + "\n"
    write_atomic(folder / NETWORK_INFO_NAME, lambda tmp: Path(tmp).write_text(text))
    return folder / NETWORK_NAME


class BestHeadWriter:
    """``on_epoch`` of the linear probe: the best head into the folder, then the checkpoint."""

    def __init__(self, folder: Path, checkpoint: ProbeCheckpoint, n_last_blocks: int, avgpool: bool,
                 info: dict[str, Any]) -> None:
        self.folder, self.checkpoint, self.info = folder, checkpoint, info
        self.n_last_blocks, self.avgpool = n_last_blocks, avgpool

    def __call__(self, end: EpochEnd) -> None:
        if not self.checkpoint.writer:
            return
        if end.best is not None:
            head = LinearHead(end.best["linear.weight"], end.best["linear.bias"], self.n_last_blocks, self.avgpool,
                              {**self.info, **_epoch_record(end)})
            write_linear_head(self.folder, head)
        self.checkpoint.save(end.state)


class BestNetworkWriter:
    """``on_epoch`` of fine-tuning: the best network into the folder, then the checkpoint."""

    def __init__(self, folder: Path, checkpoint: ProbeCheckpoint, info: dict[str, Any]) -> None:
        self.folder, self.checkpoint, self.info = folder, checkpoint, info

    def __call__(self, end: EpochEnd) -> None:
        if not self.checkpoint.writer:
            return
        if end.best is not None:
            write_network(self.folder, end.best, {**self.info, **_epoch_record(end)})
        self.checkpoint.save(end.state)
