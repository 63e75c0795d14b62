"""Where a command writes, and the one rule that keeps what a user already has.

Every command writes into an output *folder*: a new one, an empty one, or — with
``--overwrite`` — one whose files of the same names are replaced (other files are kept).
Whether the folder can be written is checked before any work is done, so a refusal leaves
nothing behind and costs nothing. Default folder names are derived from the command, the
weights and the data, so two runs on different inputs never collide.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from dinossl.errors import DinoError


def check_writable(path: str | Path) -> Path:
    """``path`` if it could be created or written: its nearest existing ancestor is a writable
    folder. Raises DinoError naming the obstacle (a regular file on the way, a read-only or
    foreign filesystem)."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise DinoError(f"cannot write to {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DinoError(f"cannot write to {path}: {existing} is not a writable folder")
    return path


def usable_output_folder(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` as a Path if results may be written there: it does not exist yet, or is an empty
    folder, or ``overwrite`` is set (files of the same names are then replaced, others kept).
    Nothing is created: the writers create the folder when they write."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DinoError(f"output {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise DinoError(f"output folder {path} is not empty; choose a new folder or pass --overwrite")
    return check_writable(path)


def usable_output_file(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` as a Path if a file may be written there: it does not exist (or ``overwrite``),
    is not a folder, and its folder can be written."""
    path = Path(path)
    if path.is_dir():
        raise DinoError(f"output {path} is a folder; name a file")
    if path.exists() and not overwrite:
        raise DinoError(f"{path} exists; pass --overwrite to replace it or choose another output")
    return check_writable(path)


def _slug(value: str | Path) -> str:
    """A short file-name-safe name for a weights source or a data folder."""
    text = str(value).rstrip("/\\")
    name = Path(text).stem if "://" not in text else Path(text.split("?")[0]).stem
    if name in ("checkpoint", "teacher_backbone", "student_backbone") and Path(text).parent.name:
        name = f"{Path(text).parent.name}-{name}"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_.") or "input"


def default_output_folder(command: str, weights: Optional[str | Path] = None,
                          data: Optional[str | Path] = None) -> Path:
    """``<command>-<weights name>-<data name>`` in the current folder, e.g.
    ``eval-knn-run1-checkpoint-cifar10``: different weights or data never share a folder."""
    parts = [command] + [_slug(p) for p in (weights, data) if p is not None]
    return Path("-".join(parts))
