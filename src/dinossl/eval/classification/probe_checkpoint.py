"""Per-epoch state of a supervised probe (linear probe, fine-tuning) in its output folder, so a
killed probe resumes where it stopped.

After each epoch ``<evaluation>_checkpoint.pth`` holds what the probe needs to go on (network,
optimiser, epoch, history, best epoch) and an ``identity``: the weights, data and settings of
the probe. The same command resumes from it; a checkpoint of other settings is refused, naming
the settings that differ. The file is removed when the probe finishes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from dinossl.errors import DinoError
from dinossl.safe_files import read_weights_file, write_atomic


def plain(value: Any) -> Any:
    """``value`` as JSON data (tuples become lists), so that identities compare after a round trip."""
    return json.loads(json.dumps(value, default=str))


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, dict):
        return {prefix.rstrip("."): values}
    out: dict[str, Any] = {}
    for key, value in values.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


@dataclass
class ProbeCheckpoint:
    """The checkpoint file of one probe; only the main process writes it."""

    path: Path
    identity: dict[str, Any]
    writer: bool = True

    @classmethod
    def in_folder(cls, folder: str | Path, evaluation: str, identity: dict[str, Any],
                  writer: bool = True) -> "ProbeCheckpoint":
        return cls(Path(folder) / f"{evaluation}_checkpoint.pth", plain(identity), writer)

    def read(self) -> Optional[dict[str, Any]]:
        """The saved state when the folder holds one of this probe; None when it holds none.
        DinoError for a checkpoint of another probe."""
        if not self.path.is_file():
            return None
        state = read_weights_file(self.path)
        stored = state.get("identity") if isinstance(state, dict) else None
        if not isinstance(stored, dict):
            raise DinoError(f"{self.path} is not a probe checkpoint of dinossl; choose another output folder")
        if stored != self.identity:
            a, b = _flat(stored), _flat(self.identity)
            differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise DinoError(f"{self.path} belongs to a probe with other settings ({', '.join(differ[:6])}); "
                            "choose another output folder, or delete it to start again")
        return state

    def save(self, state: dict[str, Any]) -> None:
        if self.writer:
            write_atomic(self.path, lambda tmp: torch.save({**state, "identity": self.identity}, tmp))

    def remove(self) -> None:
        if self.writer and self.path.is_file():
            self.path.unlink()
