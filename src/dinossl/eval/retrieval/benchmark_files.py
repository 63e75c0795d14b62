"""The revisited Oxford and Paris benchmarks as distributed (Radenovic et al. 2018):
``ROOT/<dataset>/jpg/<name>.jpg`` and ``ROOT/<dataset>/gnd_<dataset>.pkl``.

The ground-truth file is a pickle of plain data: a dict with ``imlist`` (database image names),
``qimlist`` (query image names) and ``gnd``, one dict per query with ``bbx`` (x1, y1, x2, y2 of
the query's region in its image), and ``easy``, ``hard``, ``junk`` (database indices).

Safety: a pickle can run code when it is read, so this one is read with a restricted
unpickler that only builds builtin data (lists, dicts, strings, numbers, sets) and numpy
arrays and scalars; any other global (a function, a class, an import) refuses the whole file
with one :class:`~dinossl.errors.DataError`, before anything in it is called.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from dinossl.errors import DataError

DATASETS = ("roxford5k", "rparis6k")

# (module, name) pairs the unpickler may resolve: builtin data types, and what numpy arrays,
# dtypes and scalars pickle into (numpy 1.x and 2.x module names; protocol 2 bytes).
_ALLOWED_GLOBALS = frozenset({
    *((module, name) for module in ("builtins", "__builtin__")
      for name in ("set", "frozenset", "complex", "bytes", "bytearray")),
    ("_codecs", "encode"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
})


class _Refused(pickle.UnpicklingError):
    """A global outside the allowed set."""


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(f"it would import {module}.{name}")


def read_data_pickle(path: str | Path) -> Any:
    """The plain data (builtins and numpy arrays) pickled in ``path``; DataError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ground-truth file {path} does not exist")
    try:
        return _DataOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except _Refused as exc:
        raise DataError(f"{path}: refused to unpickle ({exc}); only builtin data and numpy arrays are read, "
                        "since loading anything else could run code") from exc
    except Exception as exc:  # truncated or not a pickle: many exception types
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class QueryTruth:
    """Ground truth of one query: database indices, and its region (x1, y1, x2, y2) or None."""

    easy: tuple[int, ...]
    hard: tuple[int, ...]
    junk: tuple[int, ...]
    bbx: Optional[tuple[float, float, float, float]]


@dataclass(frozen=True)
class RevisitedBenchmark:
    """A revisited Oxford or Paris benchmark: its image names, ground truth and files."""

    dataset: str
    folder: Path  # ROOT/<dataset>
    imlist: tuple[str, ...]
    qimlist: tuple[str, ...]
    gnd: tuple[QueryTruth, ...]

    @property
    def images(self) -> Path:
        return self.folder / "jpg"

    def path(self, name: str) -> Path:
        return self.images / f"{name}.jpg"

    @property
    def database_paths(self) -> list[Path]:
        return [self.path(name) for name in self.imlist]

    @property
    def query_paths(self) -> list[Path]:
        return [self.path(name) for name in self.qimlist]

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "folder": str(self.folder.resolve()), "database_images": len(self.imlist),
                "queries": len(self.qimlist)}


def _names(value: Any, field: str, source: Path) -> tuple[str, ...]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{source}: '{field}' must be a list of image names")
    if not value:
        raise DataError(f"{source}: '{field}' is empty")
    return tuple(value)


def _indices(entry: dict, field: str, query: int, size: int, source: Path) -> tuple[int, ...]:
    value = entry.get(field, [])
    values = np.asarray(value).ravel()
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"{source}: gnd[{query}]['{field}'] must hold integer database indices")
    indices = tuple(int(v) for v in values)
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
        raise DataError(f"{source}: gnd[{query}]['{field}'] holds index {bad[0]}, outside the {size} database images")
    return indices


def _box(entry: dict, query: int, source: Path) -> Optional[tuple[float, float, float, float]]:
    if entry.get("bbx") is None:
        return None
    values = np.asarray(entry["bbx"]).ravel()
    if values.size != 4 or not np.issubdtype(values.dtype, np.number):
        raise DataError(f"{source}: gnd[{query}]['bbx'] must be 4 numbers (x1, y1, x2, y2)")
    x1, y1, x2, y2 = (float(v) for v in values)
    if not (x2 > x1 and y2 > y1):
        raise DataError(f"{source}: gnd[{query}]['bbx'] = {[x1, y1, x2, y2]} is an empty region")
    return x1, y1, x2, y2


def parse_ground_truth(raw: Any, source: Path) -> tuple[tuple[str, ...], tuple[str, ...], tuple[QueryTruth, ...]]:
    """(imlist, qimlist, gnd) of an unpickled ground-truth dict, checked; DataError naming the
    first problem."""
    if not isinstance(raw, dict):
        raise DataError(f"{source}: expected a dict with imlist, qimlist and gnd, found {type(raw).__name__}")
    missing = [key for key in ("imlist", "qimlist", "gnd") if key not in raw]
    if missing:
        raise DataError(f"{source}: missing {', '.join(missing)} (expected imlist, qimlist and gnd)")
    imlist = _names(raw["imlist"], "imlist", source)
    qimlist = _names(raw["qimlist"], "qimlist", source)
    entries = raw["gnd"]
    if not isinstance(entries, (list, tuple)) or len(entries) != len(qimlist):
        count = len(entries) if isinstance(entries, (list, tuple)) else type(entries).__name__
        raise DataError(f"{source}: 'gnd' must be a list with one dict per query ({len(qimlist)}), found {count}")
    gnd = []
    for query, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{source}: gnd[{query}] must be a dict with easy, hard and junk")
        if not any(key in entry for key in ("easy", "hard")):
            raise DataError(f"{source}: gnd[{query}] has neither 'easy' nor 'hard' positives")
        gnd.append(QueryTruth(
            easy=_indices(entry, "easy", query, len(imlist), source),
            hard=_indices(entry, "hard", query, len(imlist), source),
            junk=_indices(entry, "junk", query, len(imlist), source),
            bbx=_box(entry, query, source),
        ))
    return imlist, qimlist, tuple(gnd)


def open_revisited(root: str | Path, dataset: str) -> RevisitedBenchmark:
    """Read and check ``ROOT/<dataset>``: the ground truth, and that every listed image exists."""
    if dataset not in DATASETS:
        raise DataError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"benchmark folder {root} does not exist")
    folder = root / dataset
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist (expected ROOT/{dataset}/jpg and ROOT/{dataset}/gnd_{dataset}.pkl)")
    gnd_path = folder / f"gnd_{dataset}.pkl"
    if not gnd_path.is_file():
        raise DataError(f"ground-truth file {gnd_path} does not exist")
    imlist, qimlist, gnd = parse_ground_truth(read_data_pickle(gnd_path), gnd_path)
    benchmark = RevisitedBenchmark(dataset, folder, imlist, qimlist, gnd)
    if not benchmark.images.is_dir():
        raise DataError(f"image folder {benchmark.images} does not exist")
    names = sorted(set(imlist) | set(qimlist))
    absent = [name for name in names if not benchmark.path(name).is_file()]
    if absent:
        raise DataError(f"{len(absent)} of the {len(names)} images listed in {gnd_path.name} are not in "
                        f"{benchmark.images} (first: {absent[0]}.jpg)")
    return benchmark
