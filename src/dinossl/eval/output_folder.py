"""Output folders that never overwrite a user's earlier results by accident."""

from __future__ import annotations

from pathlib import Path

from dinossl.errors import DinoError


def usable_output_folder(path: str | Path, force: bool = False) -> Path:
    """``path`` as a Path if results may be written there: it does not exist yet, or is an empty
    folder, or ``force`` is set (files of the same names are then overwritten, others kept).
    Nothing is created: the writers create the folder when they write, so a command refused
    for bad input leaves nothing behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DinoError(f"output {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise DinoError(f"output folder {path} is not empty; choose a new folder or pass --force to overwrite")
    return path
