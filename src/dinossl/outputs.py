"""Where a command writes, and the one rule that keeps what a user already has.

Every command writes into an output *folder*: a new one, an empty one, or — with
``--overwrite`` — one whose files of the same names are replaced (other files are kept).
Whether the folder can be written is checked before any work is done, so a refusal leaves
nothing behind and costs nothing. Default folder names are derived from the command, the
weights and the data, so two runs on different inputs never collide.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Optional

from dinossl.errors import DinoError, StorageError

LOCK_NAME = ".dinossl.lock"
"""The lock file a command holds in its output folder while it works
(:mod:`dinossl.runtime.folder_lock`); it does not make a folder non-empty."""


def check_writable(path: str | Path) -> Path:
    """``path`` if it could be created or written: its nearest existing ancestor is a folder in
    which a file can be created. Raises StorageError naming the obstacle (a regular file on the
    way, a read-only or pseudo filesystem such as /proc, missing permission). The check creates
    and removes one empty hidden file there (permissions alone do not tell: root passes
    ``os.access`` on a read-only filesystem)."""
    path = Path(path)
    start = path.parent if path.is_file() else path  # an existing file is replaced in its folder
    existing = next((p for p in (start, *start.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise StorageError(f"cannot write to {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StorageError(f"cannot write to {path}: {existing} is not a writable folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".dinossl-write-check-", dir=existing)
    except OSError as exc:
        reason = "a read-only filesystem" if exc.errno == errno.EROFS else (exc.strerror or str(exc))
        raise StorageError(f"cannot write to {path}: {existing} does not accept new files ({reason})") from exc
    os.close(handle)
    os.unlink(probe)
    return path


def usable_output_folder(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` as a Path if results may be written there: it does not exist yet, or is an empty
    folder, or ``overwrite`` is set (files of the same names are then replaced, others kept).
    Nothing is created: the writers create the folder when they write."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DinoError(f"output {path} exists and is not a folder")
    if path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir()) and not overwrite:
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


_GENERIC_STEMS = ("checkpoint", "teacher_backbone", "student_backbone", "backbone", "model", "weights")


def _safe(name: str, fallback: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or fallback


def weights_label(weights: str | Path, which: str = "teacher") -> str:
    """A short name for weights in folder names: the file stem (with its folder's name when the
    stem is generic, e.g. ``run1-checkpoint``), a URL's file stem, a released name, or an
    ``hf-hub:`` repository's name; a checkpoint's student gets ``-student``."""
    text = str(weights)
    path = Path(text.rstrip("/").split("?")[0])
    label = path.stem if path.suffix else path.name
    if text.startswith("hf-hub:"):  # hf-hub:ORG/NAME[@REVISION]: the repository's name
        label = text.rsplit("/", 1)[-1]
    if path.is_file() and label in _GENERIC_STEMS and path.resolve().parent.name:
        label = f"{path.resolve().parent.name}-{label}"
    if which == "student":
        label += "-student"
    return _safe(label, "weights")


def data_label(path: str | Path) -> str:
    """The name of a data folder or file (the resolved name for ``.`` and the like)."""
    path = Path(path)
    return _safe(path.stem if path.is_file() else (path.name or path.resolve().name), "data")


def default_output_folder(command: str, weights: Optional[str | Path] = None, data: Optional[str | Path] = None,
                          which: str = "teacher") -> Path:
    """``<command>-<data name>-<weights name>`` in the current folder (e.g.
    ``eval-knn-cifar10-run1-checkpoint``): runs on other data or weights never share a folder."""
    parts = [command]
    if data is not None:
        parts.append(data_label(data))
    if weights is not None:
        parts.append(weights_label(weights, which))
    return Path("-".join(parts))
