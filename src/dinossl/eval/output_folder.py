"""Output folders that never overwrite a user's earlier results by accident."""

from __future__ import annotations

from pathlib import Path

from dinossl.errors import DinoError


def fresh_output_folder(path: str | Path, force: bool = False) -> Path:
    """Create ``path`` (parents too) and return it. An existing non-empty folder is refused
    unless ``force``, in which case files of the same names are overwritten and others kept."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DinoError(f"output {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise DinoError(f"output folder {path} is not empty; choose a new folder or pass --force to overwrite")
    path.mkdir(parents=True, exist_ok=True)
    return path
