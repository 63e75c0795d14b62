"""Labelled train/val image folders: the inputs of the classification protocols."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


from dinossl.data.images import ImageFolder
from dinossl.errors import DataError, DinoError

VAL_NAMES = ("val", "test")


@dataclass(frozen=True)
class LabelledSplits:
    """A train folder (k-NN bank / classifier training) and a val folder with the same classes."""

    train: ImageFolder
    val: ImageFolder

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def describe(self) -> dict[str, Any]:
        return {
            "train": str(self.train.root.resolve()), "val": str(self.val.root.resolve()),
            "train_images": len(self.train), "val_images": len(self.val), "classes": len(self.classes),
        }


def _labelled_folder(path: Path, role: str) -> ImageFolder:
    folder = ImageFolder(path)
    if not folder.classes:
        raise DataError(f"{role} folder {path} has no class subfolders (expected {path}/<class>/<image>)")
    if not folder.labeled:
        unlabeled = int((folder.labels < 0).sum())
        raise DataError(f"{role} folder {path} holds {unlabeled} images outside class subfolders")
    return folder


def split_paths(data: Optional[str | Path], train: Optional[str | Path], val: Optional[str | Path]) -> tuple[Path, Path]:
    """(train, val) folders from ``data`` (its ``train/`` and ``val/``, or ``test/``) or two paths."""
    if data is not None:
        if train is not None or val is not None:
            raise DinoError("give either a data folder (with train/ and val/) or --train and --val, not both")
        root = Path(data)
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist")
        found_val = next((root / name for name in VAL_NAMES if (root / name).is_dir()), None)
        if not (root / "train").is_dir() or found_val is None:
            raise DataError(f"{root} must hold train/ and val/ (or test/) folders with class subfolders")
        return root / "train", found_val
    if train is None or val is None:
        raise DinoError("give a data folder (with train/ and val/) or both --train and --val")
    return Path(train), Path(val)


def open_splits(
    data: Optional[str | Path] = None, train: Optional[str | Path] = None, val: Optional[str | Path] = None
) -> LabelledSplits:
    """Open and check the two folders: both labelled, same class names (raises DataError)."""
    train_path, val_path = split_paths(data, train, val)
    splits = LabelledSplits(_labelled_folder(train_path, "train"), _labelled_folder(val_path, "val"))
    if splits.train.classes != splits.val.classes:
        only_train = sorted(set(splits.train.classes) - set(splits.val.classes))
        only_val = sorted(set(splits.val.classes) - set(splits.train.classes))
        detail = f"only in train: {only_train[:5]}, only in val: {only_val[:5]}" if only_train or only_val else "different order"
        raise DataError(f"train and val class folders differ ({detail}): {train_path} vs {val_path}")
    return splits


@dataclass(frozen=True)
class ValSplit:
    """A labelled val folder alone (scoring a saved classifier needs no training images)."""

    val: ImageFolder

    @property
    def classes(self) -> list[str]:
        return self.val.classes

    def describe(self) -> dict[str, Any]:
        return {"val": str(self.val.root.resolve()), "val_images": len(self.val), "classes": len(self.classes)}


def open_val(data: Optional[str | Path] = None, val: Optional[str | Path] = None) -> ValSplit:
    """The val folder: ``data``'s ``val/`` (or ``test/``), or ``val``; labelled (DataError otherwise)."""
    if data is not None and val is not None:
        raise DinoError("give either a data folder (with val/) or --val, not both")
    if data is not None:
        root = Path(data)
        found = next((root / name for name in VAL_NAMES if (root / name).is_dir()), None)
        if found is None:
            raise DataError(f"{root} must hold a val/ (or test/) folder with class subfolders")
        return ValSplit(_labelled_folder(found, "val"))
    if val is None:
        raise DinoError("give a data folder (with val/) or --val")
    return ValSplit(_labelled_folder(Path(val), "val"))
