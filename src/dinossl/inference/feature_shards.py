"""A folder of image features that other tools read without dinossl, written shard by shard.

Layout of a feature folder::

    features-00000.safetensors   shard k: the rows of the images k*S .. (k+1)*S - 1 of the
    features-00000.json          input list (S images per shard) that could be read; the
    ...                          .json beside it lists them (path, size) and the skipped ones
    index.csv                    path, shard, row, width, height: one line per feature row
    descriptors.npy              every descriptor (N, D) in index order (memory-mappable)
    manifest.json                weights, architecture, settings, dtype, dimension, count, skipped

A shard holds ``descriptors`` (n, D) and optionally ``patch_tokens`` ((n, G*G, D) pooled to a
fixed grid, or (sum of h*w, D) full grids with ``patch_grids`` (n, 2) giving each image's
(h, w)). As ``.npy`` files the same arrays are ``<name>-00000.npy`` (``descriptors-``,
``patch-tokens-``, ``patch-grids-``). Every file is written atomically, the shard record last,
so a shard with a record is complete: an interrupted run resumes at the first shard without
one and writes the same bytes as an uninterrupted run. The writer knows nothing of backbones:
any pass that produces rows per input image (``dino embed``, a dedupe feature pass) can use it.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy_file
from safetensors.numpy import save_file as save_numpy_file

from dinossl.errors import DataError
from dinossl.safe_files import write_atomic

SHARD_FORMATS = ("safetensors", "npy")
DTYPES = {"float32": np.float32, "float16": np.float16}
MANIFEST = "manifest.json"
INDEX = "index.csv"
DESCRIPTORS = "descriptors.npy"
_NPY_NAMES = {"descriptors": "descriptors", "patch_tokens": "patch-tokens", "patch_grids": "patch-grids"}


def shard_stem(shard: int) -> str:
    return f"features-{shard:05d}"


def write_json(path: Path, record: Any) -> None:
    """``record`` as indented JSON (keys in insertion order: the same record gives the same bytes)."""
    text = json.dumps(record, indent=1) + "\n"
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


@dataclass
class ShardRows:
    """What one shard holds: the arrays (first axis per image, except full patch grids) and,
    per readable image, its path and original (width, height); the skipped images' reasons."""

    arrays: dict[str, np.ndarray]
    paths: list[str]
    sizes: list[tuple[int, int]]
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ShardWriter:
    """Writes shards of ``images_per_shard`` input images into ``folder`` in ``fmt``
    (safetensors or npy), rows cast to ``dtype`` (float32 or float16)."""

    folder: Path
    images_per_shard: int = 1000
    fmt: str = "safetensors"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.fmt not in SHARD_FORMATS:
            raise DataError(f"shard format must be one of {', '.join(SHARD_FORMATS)}, got {self.fmt!r}")
        if self.dtype not in DTYPES:
            raise DataError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.images_per_shard < 1:
            raise DataError(f"images per shard must be positive, got {self.images_per_shard}")

    def shards(self, images: int) -> int:
        """How many shards ``images`` input images fill."""
        return -(-images // self.images_per_shard)

    def span(self, shard: int, images: int) -> range:
        """The input images of shard ``shard``."""
        start = shard * self.images_per_shard
        return range(start, min(images, start + self.images_per_shard))

    def record_path(self, shard: int) -> Path:
        return self.folder / f"{shard_stem(shard)}.json"

    def array_files(self, shard: int, names: Sequence[str]) -> list[Path]:
        if self.fmt == "safetensors":
            return [self.folder / f"{shard_stem(shard)}.safetensors"]
        return [self.folder / f"{_NPY_NAMES[name]}-{shard:05d}.npy" for name in names]

    def is_done(self, shard: int) -> bool:
        """Whether the shard was written completely (its record is written last)."""
        return self.record_path(shard).is_file()

    def _cast(self, name: str, values: np.ndarray) -> np.ndarray:
        if name == "patch_grids":
            return np.ascontiguousarray(values, dtype=np.int64)
        return np.ascontiguousarray(values, dtype=DTYPES[self.dtype])

    def write(self, shard: int, rows: ShardRows) -> None:
        """Write shard ``shard`` (arrays first, then its record)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        arrays = {name: self._cast(name, values) for name, values in rows.arrays.items()}
        if self.fmt == "safetensors":
            write_atomic(self.array_files(shard, arrays)[0], lambda tmp: save_numpy_file(arrays, tmp))
        else:
            for (name, values), path in zip(arrays.items(), self.array_files(shard, arrays)):
                write_atomic(path, lambda tmp, values=values: _save_npy(tmp, values))
        record = {"shard": shard, "arrays": {k: list(v.shape) for k, v in arrays.items()},
                  "images": [{"path": p, "width": w, "height": h} for p, (w, h) in zip(rows.paths, rows.sizes)],
                  "skipped": rows.skipped}
        write_json(self.record_path(shard), record)

    def read_record(self, shard: int) -> dict[str, Any]:
        return json.loads(self.record_path(shard).read_text())

    def read(self, shard: int) -> dict[str, np.ndarray]:
        """The arrays of a written shard."""
        names = list(self.read_record(shard)["arrays"])
        if self.fmt == "safetensors":
            return load_numpy_file(str(self.array_files(shard, names)[0]))
        return {name: np.load(path) for name, path in zip(names, self.array_files(shard, names))}

    def finish(self, shards: int, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write ``index.csv``, ``descriptors.npy`` and ``manifest.json`` from the shard records
        (``manifest`` gets count, dimension and the skipped images); returns the manifest."""
        lines = io.StringIO()
        table = csv.writer(lines, lineterminator="\n")
        table.writerow(["path", "shard", "row", "width", "height"])
        skipped: list[dict[str, str]] = []
        count, dim = 0, None
        for shard in range(shards):
            record = self.read_record(shard)
            skipped += record["skipped"]
            for row, image in enumerate(record["images"]):
                table.writerow([image["path"], shard, row, image["width"], image["height"]])
            count += len(record["images"])
            shape = record["arrays"].get("descriptors")
            if shape and len(shape) == 2 and shape[0]:
                dim = shape[1]
        dim = int(dim or 0)
        write_atomic(self.folder / INDEX, lambda tmp: Path(tmp).write_text(lines.getvalue()))

        def write_descriptors(tmp: str) -> None:
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPES[self.dtype], shape=(count, dim))
            start = 0
            for shard in range(shards):
                rows = self.read(shard)["descriptors"]
                matrix[start:start + len(rows)] = rows
                start += len(rows)
            matrix.flush()
            del matrix

        write_atomic(self.folder / DESCRIPTORS, write_descriptors)
        manifest = {**manifest, "count": count, "dimension": dim, "shards": shards, "skipped_count": len(skipped),
                    "skipped": skipped}
        write_json(self.folder / MANIFEST, manifest)
        return manifest


def _save_npy(path: str, values: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, values)


@dataclass
class FeatureFolder:
    """A finished feature folder opened for reading: ``paths`` (N,) as written in the index,
    ``descriptors`` (N, D) memory-mapped, ``manifest``, and the shards' patch tokens on request."""

    folder: Path
    paths: list[str]
    descriptors: np.ndarray
    manifest: dict[str, Any]

    def writer(self) -> ShardWriter:
        m = self.manifest
        return ShardWriter(self.folder, m["images_per_shard"], m["format"], m["dtype"])

    def shard(self, shard: int) -> dict[str, np.ndarray]:
        """The arrays of one shard (descriptors, patch tokens, patch grids)."""
        return self.writer().read(shard)

    def labels_by_folder(self) -> tuple[np.ndarray, list[str]]:
        """Class labels (N,) from each path's first folder (``<class>/<image>``, sorted class
        names as an image folder numbers them) and the class names."""
        parts = [Path(p).parts for p in self.paths]
        if any(len(p) < 2 for p in parts):
            raise DataError(f"{self.folder}: images are not in class folders (<class>/<image>), so they have no labels")
        classes = sorted({p[0] for p in parts})
        lookup = {name: i for i, name in enumerate(classes)}
        return np.array([lookup[p[0]] for p in parts], dtype=np.int64), classes


def load_features(folder: str | Path) -> FeatureFolder:
    """Open a feature folder written by ``dino embed`` (paths and a memory-mapped descriptor
    matrix); DataError when it is not one or is unfinished."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{folder} is not a finished feature folder (no {MANIFEST}; dino embed writes it last)")
    manifest = json.loads(manifest_path.read_text())
    with open(folder / INDEX, newline="") as handle:
        paths = [row["path"] for row in csv.DictReader(handle)]
    descriptors = np.load(folder / DESCRIPTORS, mmap_mode="r")
    if descriptors.shape[0] != len(paths):
        raise DataError(f"{folder}: {DESCRIPTORS} has {descriptors.shape[0]} rows, {INDEX} {len(paths)}")
    return FeatureFolder(folder, paths, descriptors, manifest)


def as_tensor(rows: np.ndarray) -> torch.Tensor:
    """Feature rows as a float32 tensor (a copy, never the memory map)."""
    return torch.from_numpy(np.array(rows, dtype=np.float32))
