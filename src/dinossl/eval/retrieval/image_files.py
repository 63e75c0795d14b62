"""Image files of a folder (optionally its whole tree), checked before any weights are loaded:
the folder exists, holds images, and some of them decode."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dinossl.data.images import IMAGE_EXTENSIONS
from dinossl.errors import DataError
from dinossl.eval.image_input import open_image


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def list_images(folder: str | Path, role: str = "image folder", recursive: bool = False) -> list[Path]:
    """Sorted image files in ``folder`` (and its subfolders when ``recursive``); DataError when
    the folder is missing, empty or holds no image files."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{role} {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{role} {folder} is a file, not a folder")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in candidates if is_image_file(p))
    if not files:
        where = "in it or its subfolders" if recursive else "in it"
        if not any(folder.iterdir()):
            raise DataError(f"{role} {folder} is empty")
        raise DataError(f"no images in {role} {folder} (looked for {', '.join(IMAGE_EXTENSIONS)} files {where})")
    return files


def check_some_decode(files: Sequence[Path], role: str, sample: int = 16) -> None:
    """DataError when none of up to ``sample`` files spread over ``files`` decodes."""
    if not files:
        raise DataError(f"no images in {role}")
    picks = np.unique(np.linspace(0, len(files) - 1, num=min(sample, len(files))).astype(int))
    for index in picks:
        try:
            open_image(files[int(index)])
            return
        except DataError:
            continue
    raise DataError(f"none of the {len(picks)} images checked in {role} could be decoded "
                    f"(e.g. {files[int(picks[0])]})")
