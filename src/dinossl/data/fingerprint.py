"""A cheap fingerprint of a training set, so that a resumed run can tell that its data changed.

For a folder: the number of images, the SHA-256 of the sorted lines ``<relative path>\\t<size in
bytes>``, and one 64-bit hash per image of that same line (sorted), from which the images added
and removed since can be counted; a file whose size changed counts as one removed and one added.
Nothing is decoded: it costs one ``stat`` per file. For in-memory images (the built-in sample),
the lines are the index and a hash of each image's pixels.

A checkpoint stores :meth:`DataFingerprint.record` under ``data``; about 8 bytes per image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from dinossl.data.images import ArrayImages, ImageFolder


def _entry_hash(line: str) -> int:
    return int.from_bytes(hashlib.blake2b(line.encode(), digest_size=8).digest(), "little", signed=True)


@dataclass(frozen=True)
class DataFingerprint:
    """``images`` count, ``sha256`` of the sorted entry lines, ``entries``: (images,) sorted int64
    hashes of the same lines."""

    images: int
    sha256: str
    entries: np.ndarray

    @classmethod
    def of_lines(cls, lines: Iterable[str]) -> "DataFingerprint":
        ordered = sorted(lines)
        digest = hashlib.sha256()
        for line in ordered:
            digest.update(line.encode() + b"\n")
        entries = np.sort(np.asarray([_entry_hash(line) for line in ordered], dtype=np.int64))
        return cls(len(ordered), digest.hexdigest(), entries)

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores (tensors and plain data only)."""
        return {"images": self.images, "sha256": self.sha256, "entries": torch.from_numpy(self.entries.copy())}

    @classmethod
    def from_record(cls, record: Any) -> Optional["DataFingerprint"]:
        """The fingerprint a checkpoint stored; None when it holds none (an older checkpoint)."""
        if not isinstance(record, dict) or "sha256" not in record:
            return None
        entries = record.get("entries")
        entries = entries.numpy() if isinstance(entries, torch.Tensor) else np.zeros(0, dtype=np.int64)
        return cls(int(record.get("images", len(entries))), str(record["sha256"]), entries.astype(np.int64))

    def changes_since(self, earlier: "DataFingerprint") -> tuple[int, int]:
        """(images added, images removed) going from ``earlier`` to this one."""
        now, before = self.entries, earlier.entries
        added = int(np.count_nonzero(~np.isin(now, before)))
        removed = int(np.count_nonzero(~np.isin(before, now)))
        return added, removed

    def describe_change(self, earlier: "DataFingerprint") -> str:
        """e.g. '3 images added, 1 removed (64 -> 66 images)'."""
        added, removed = self.changes_since(earlier)
        if not added and not removed:  # same entries, other hash: cannot happen unless the record was edited
            return f"the listing differs ({earlier.images} -> {self.images} images)"
        return f"{added} images added, {removed} removed ({earlier.images} -> {self.images} images)"


def fingerprint_images(source: ImageFolder | ArrayImages) -> DataFingerprint:
    """The fingerprint of a training source (see the module docstring)."""
    if isinstance(source, ImageFolder):
        root = Path(source.root)
        return DataFingerprint.of_lines(f"{Path(f).relative_to(root).as_posix()}\t{Path(f).stat().st_size}"
                                        for f in source.files)
    pixels = np.ascontiguousarray(source.pixels)
    return DataFingerprint.of_lines(f"{i}\t{hashlib.blake2b(pixels[i].tobytes(), digest_size=8).hexdigest()}"
                                    for i in range(len(pixels)))
