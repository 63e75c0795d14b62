"""Descriptors of a large image set on disk, written as they are computed and resumable after
the process is killed.

A store is a folder:

* ``features.npy``: an (N, D) float16 numpy array, memory-mapped, filled row by row in order;
* ``progress.json``: ``done`` (rows 0 .. done-1 are final) and the ``unreadable`` rows (left
  at zero), rewritten atomically after each batch of rows has been flushed to disk;
* ``store.json``: rows, dimension and the identity the rows were computed for (weights,
  descriptor, image list), written once when the store is created.

A killed run leaves at most the rows after ``done`` unfinished; opening the store with the same
identity continues from ``done``. A store of another identity is never reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from dinossl.errors import DataError, DinoError
from dinossl.safe_files import write_atomic

FEATURES = "features.npy"
PROGRESS = "progress.json"
STORE = "store.json"


class StoreMismatch(DinoError):
    """A store computed for another identity (other weights, descriptor or images)."""


def _write_json(path: Path, record: dict[str, Any]) -> None:
    text = json.dumps(record, indent=1) + "\n"
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def _canonical(identity: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(identity, sort_keys=True))


class FeatureStore:
    """(rows, dim) float16 descriptors in ``folder``; see the module docstring."""

    def __init__(self, folder: Path, rows: int, dim: int, identity: dict[str, Any], done: int,
                 unreadable: dict[int, str], writable: bool) -> None:
        self.folder = Path(folder)
        self.rows, self.dim, self.identity = rows, dim, identity
        self.done = done
        self.unreadable = unreadable
        self._array = np.lib.format.open_memmap(self.folder / FEATURES, mode="r+" if writable else "r")
        if self._array.shape != (rows, dim) or self._array.dtype != np.float16:
            raise DataError(f"{self.folder / FEATURES} holds {self._array.dtype} {self._array.shape}, "
                            f"expected float16 ({rows}, {dim})")

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / STORE).is_file()

    @classmethod
    def create(cls, folder: str | Path, identity: dict[str, Any], rows: int, dim: int) -> "FeatureStore":
        """A new, empty store (replacing any store in ``folder``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in (STORE, PROGRESS):
            (folder / name).unlink(missing_ok=True)
        array = np.lib.format.open_memmap(folder / FEATURES, mode="w+", dtype=np.float16, shape=(rows, dim))
        array.flush()
        del array
        _write_json(folder / PROGRESS, {"done": 0, "unreadable": {}})
        _write_json(folder / STORE, {"rows": rows, "dim": dim, "dtype": "float16", "identity": _canonical(identity)})
        return cls(folder, rows, dim, _canonical(identity), 0, {}, writable=True)

    @classmethod
    def open(cls, folder: str | Path, identity: Optional[dict[str, Any]] = None, writable: bool = False) -> "FeatureStore":
        """The store in ``folder``; StoreMismatch when ``identity`` is given and differs."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / STORE).read_text())
            progress = json.loads((folder / PROGRESS).read_text())
            rows, dim, stored = int(meta["rows"]), int(meta["dim"]), meta["identity"]
            done = int(progress["done"])
            unreadable = {int(k): str(v) for k, v in progress["unreadable"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{folder} is not a readable feature store ({exc})") from exc
        if identity is not None and stored != _canonical(identity):
            changed = sorted(k for k in set(stored) | set(identity) if stored.get(k) != _canonical(identity).get(k))
            raise StoreMismatch(f"the feature store in {folder} was computed for other {', '.join(changed)}")
        return cls(folder, rows, dim, stored, done, unreadable, writable)

    @property
    def complete(self) -> bool:
        return self.done >= self.rows

    @property
    def features(self) -> np.ndarray:
        """The (rows, dim) float16 memory-mapped array (rows after ``done`` are not final)."""
        return self._array

    def readable_rows(self) -> np.ndarray:
        """Indices of the final rows that hold a descriptor."""
        rows = np.arange(self.done, dtype=np.int64)
        if not self.unreadable:
            return rows
        return rows[~np.isin(rows, np.fromiter(self.unreadable, dtype=np.int64))]

    def write(self, indices: list[int], descriptors: np.ndarray, unreadable: list[tuple[int, str]], done: int) -> None:
        """Store rows ``indices``, flush them to disk, then record ``done`` and the unreadable rows."""
        if done < self.done or done > self.rows:
            raise ValueError(f"done must be in [{self.done}, {self.rows}], got {done}")
        if indices:
            block = np.asarray(descriptors, dtype=np.float32)
            if not np.isfinite(block).all():
                raise DataError("the backbone produced non-finite descriptors")
            self._array[np.asarray(indices, dtype=np.int64)] = block.astype(np.float16)
            self._array.flush()
        for index, reason in unreadable:
            self.unreadable[int(index)] = reason
        self.done = done
        _write_json(self.folder / PROGRESS, {"done": done, "unreadable": {str(k): v for k, v in self.unreadable.items()}})
