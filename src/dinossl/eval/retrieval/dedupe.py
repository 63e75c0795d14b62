"""``dino dedupe``: near-duplicate images in a folder tree, or the nearest neighbours of given
images among them.

Index: every image file under FOLDER (sorted relative paths; the output folder excluded) is
described (:class:`DedupeSettings`: [CLS] or [CLS] + GeM of a square resize, optionally
averaged with the mirror image so left-right flips match) and L2-normalised. Descriptors go to
a float16 :class:`~.feature_store.FeatureStore` in ``OUTPUT/index`` as they are computed: a
killed run resumes where it stopped, and later runs on the same folder, weights and
descriptor (another threshold, query mode) reuse it. Unreadable files are skipped and counted.

Search: optionally PCA-whitening learned on the folder's own descriptors; every pair with a
cosine similarity above the threshold (:func:`dinossl.eval.search.pairs_above`, in tiles);
groups are the connected components of those pairs (a group may hold two images below the
threshold that are linked through a third). Writes ``pairs.csv`` (path_a, path_b, similarity;
paths relative to FOLDER; strongest first), ``groups.json`` (summary + groups, largest first)
and ``contact_sheet.png`` (the top groups). Query mode writes ``neighbours.csv`` and
``neighbours.json`` with the top-k neighbours of each query image instead.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dinossl.errors import DataError, DinoError
from dinossl.eval.image_input import open_image
from dinossl.inference import BackboneHarness, weights_sha256
from dinossl.inference.feature_shards import FeatureFolder, load_features
from dinossl.runtime.device import resolve_device
from dinossl.outputs import LOCK_NAME, check_writable, default_output_folder
from dinossl.runtime.folder_lock import folder_lock
from dinossl.eval.retrieval.contact_sheet import contact_sheet
from dinossl.eval.retrieval.descriptors import (
    DescriptorSpec,
    ImageRequest,
    Resize,
    describe_images,
    iter_descriptors,
)
from dinossl.eval.retrieval.feature_store import FeatureStore, StoreMismatch
from dinossl.eval.retrieval.image_files import check_some_decode, list_images
from dinossl.eval.retrieval.whitening import Whitening, learn_whitening
from dinossl.eval.search import (
    Pairs,
    RowSubset,
    choose_backend,
    nearest_neighbours,
    pairs_above,
    pairs_tile_bytes,
)
from dinossl.safe_files import write_atomic

log = logging.getLogger("dinossl")

INDEX = "index"
DEDUPE_FILES = ("pairs.csv", "groups.json", "contact_sheet.png")
QUERY_FILES = ("neighbours.csv", "neighbours.json")
KNOWN_ENTRIES = frozenset({INDEX, LOCK_NAME, *DEDUPE_FILES, *QUERY_FILES})


@dataclass(frozen=True)
class DedupeSettings:
    """Descriptor, search and report settings of ``dino dedupe``."""

    threshold: float = 0.9
    pooling: str = "cls+gem"
    imsize: int = 224
    flip_invariant: bool = False
    whiten: bool = False
    tile: int = 4096
    max_pairs: int = 1_000_000
    sheet_groups: int = 12
    top_k: int = 10
    backend: str = "auto"

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise DinoError(f"threshold must be between 0 and 1 (a cosine similarity), got {self.threshold}")
        for name in ("imsize", "tile", "max_pairs", "top_k"):
            if getattr(self, name) < 1:
                raise DinoError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.sheet_groups < 0:
            raise DinoError(f"sheet-groups must be >= 0, got {self.sheet_groups}")
        choose_backend(self.backend)

    @property
    def resize(self) -> Resize:
        return Resize("square", self.imsize)

    @property
    def spec(self) -> DescriptorSpec:
        return DescriptorSpec(self.pooling, mirror=self.flip_invariant)


def check_output_folder(path: str | Path, writes: Sequence[str], overwrite: bool = False) -> Path:
    """``path`` if this run may write ``writes`` there: a new folder, or one holding only what
    ``dino dedupe`` writes and none of ``writes`` (an index to resume or reuse, or the other
    mode's results), or anything with ``overwrite``. Nothing is created here."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DinoError(f"output {path} exists and is not a folder")
    if not path.is_dir() or overwrite:
        return check_writable(path)
    entries = {entry.name for entry in path.iterdir()}
    foreign = sorted(entries - KNOWN_ENTRIES)
    if foreign:
        raise DinoError(f"output folder {path} holds other files ({', '.join(foreign[:3])}); choose a new folder "
                        "or pass --overwrite")
    clash = sorted(entries & set(writes))
    if clash:
        raise DinoError(f"output folder {path} already holds {', '.join(clash)}; pass --overwrite to replace "
                        f"(its index is reused when it matches) or choose a new folder")
    return check_writable(path)


def list_folder_images(folder: str | Path, output: Path) -> list[Path]:
    """Image files of ``folder``'s tree, without those inside ``output``; checked to decode."""
    files = list_images(folder, "image folder", recursive=True)
    out = output.resolve()
    files = [f for f in files if out not in f.resolve().parents]
    if not files:
        raise DataError(f"no images in {folder} outside the output folder {output}")
    check_some_decode(files, f"image folder {folder}")
    return files


def relative_names(root: str | Path, files: Sequence[Path]) -> list[str]:
    root = Path(root)
    return [f.relative_to(root).as_posix() for f in files]


def folder_identity(root: str | Path, files: Sequence[Path]) -> dict[str, Any]:
    """The image list as a hash of (relative path, size, modification time) of every file."""
    digest = hashlib.sha256()
    for name, path in zip(relative_names(root, files), files):
        stat = path.stat()
        digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return {"root": str(Path(root).resolve()), "images": len(files), "sha256": digest.hexdigest()}


@dataclass
class IndexReport:
    images: int
    unreadable: dict[str, str]
    resumed_from: int
    computed: int
    seconds: float

    def describe(self) -> dict[str, Any]:
        rate = self.computed / self.seconds if self.seconds > 0 and self.computed else None
        return {"images": self.images, "readable": self.images - len(self.unreadable),
                "unreadable": len(self.unreadable), "resumed_from": self.resumed_from,
                "described_now": self.computed, "seconds": round(self.seconds, 2),
                "images_per_s": None if rate is None else round(rate, 2), "unreadable_files": self.unreadable}


def _open_store(folder: Path, identity: dict[str, Any], restart: bool) -> Optional[FeatureStore]:
    if not FeatureStore.exists(folder):
        return None
    try:
        return FeatureStore.open(folder, identity, writable=True)
    except StoreMismatch as exc:
        if not restart:
            raise StoreMismatch(f"{exc}; pass --overwrite to recompute it, or choose another output folder") from exc
        log.info("recomputing the feature store in %s (%s)", folder, exc)
        return None


@torch.no_grad()
def index_images(backbone: nn.Module, files: Sequence[Path], store_folder: str | Path, identity: dict[str, Any],
                 settings: DedupeSettings, run: BackboneHarness, device: torch.device, restart: bool = False,
                 names: Optional[Sequence[str]] = None) -> tuple[FeatureStore, IndexReport]:
    """Describe ``files`` into the store in ``store_folder``, resuming a store of the same
    ``identity``; returns the complete store and what was done."""
    store_folder = Path(store_folder)
    names = list(names) if names is not None else [str(f) for f in files]
    store = _open_store(store_folder, identity, restart)
    offset = store.done if store is not None else 0
    if store is not None and store.complete:
        log.info("index: reusing the complete index in %s", store_folder)
    elif store is not None and offset:
        log.info("index: resuming at image %d of %d", offset, len(files))
    start = time.perf_counter()
    computed = 0
    pending: list[tuple[int, str]] = []
    if store is None or not store.complete:
        requests = [ImageRequest(p) for p in files[offset:]]
        for batch in iter_descriptors(backbone, requests, settings.resize, settings.spec, device, run.batch_size,
                                      run.workers, run.progress, label="index"):
            pending += [(offset + i, reason) for i, reason in batch.unreadable]
            if store is None:
                if not batch.indices:
                    continue
                store = FeatureStore.create(store_folder, identity, len(files), int(batch.descriptors.shape[1]))
            descriptors = F.normalize(batch.descriptors, dim=1).numpy()
            store.write([offset + i for i in batch.indices], descriptors, pending, offset + batch.seen)
            computed += len(batch.indices)
            pending = []
    if store is None:
        raise DataError(f"none of the {len(files)} images could be read")
    unreadable = {names[i]: reason for i, reason in sorted(store.unreadable.items())}
    report = IndexReport(len(files), unreadable, offset, computed, time.perf_counter() - start)
    if unreadable:
        log.warning("index: %d of %d images could not be read and were skipped", len(unreadable), len(files))
    return store, report


def _readable_chunks(store: FeatureStore, rows: np.ndarray, chunk: int):
    for start in range(0, len(rows), chunk):
        yield torch.from_numpy(np.asarray(store.features[rows[start:start + chunk]], dtype=np.float32))


def folder_whitening(store: FeatureStore, rows: np.ndarray, chunk: int = 4096) -> Whitening:
    """Whitening learned on the store's readable rows, ``chunk`` rows at a time."""
    if len(rows) < 10 * store.dim:
        log.warning("whitening learned on %d images for %d dimensions: with fewer images than about ten times the "
                    "dimensions it mostly separates every image from every other", len(rows), store.dim)
    return learn_whitening(_readable_chunks(store, rows, chunk))


def connected_groups(n: int, first: np.ndarray, second: np.ndarray) -> list[np.ndarray]:
    """Connected components (of at least 2 nodes) of the graph on ``n`` nodes with edges
    (first[i], second[i]): sorted node arrays, largest first (ties: lowest node first)."""
    if len(first) == 0:
        return []
    parent = np.arange(n, dtype=np.int64)
    first, second = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    while True:
        while True:  # point every node at its root (parent[x] <= x throughout)
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        roots_a, roots_b = parent[first], parent[second]
        differ = roots_a != roots_b
        if not differ.any():
            break
        low = np.minimum(roots_a[differ], roots_b[differ])
        high = np.maximum(roots_a[differ], roots_b[differ])
        np.minimum.at(parent, high, low)
    nodes = np.unique(np.concatenate([first, second]))
    labels = parent[nodes]
    order = np.argsort(labels, kind="stable")
    nodes, labels = nodes[order], labels[order]
    splits = np.flatnonzero(np.diff(labels)) + 1
    groups = [g for g in np.split(nodes, splits) if len(g) >= 2]
    return sorted(groups, key=lambda g: (-len(g), int(g[0])))


def group_records(groups: list[np.ndarray], pairs: Pairs, names: Sequence[str]) -> list[dict[str, Any]]:
    """One record per group: size, its pairs' count and similarity range, member paths."""
    if not groups:
        return []
    group_of = np.full(int(max(g.max() for g in groups)) + 1, -1, dtype=np.int64)
    for g, nodes in enumerate(groups):
        group_of[nodes] = g
    which = group_of[pairs.first]
    records = []
    for g, nodes in enumerate(groups):
        sims = pairs.similarity[which == g]
        records.append({"group": g + 1, "size": len(nodes), "pairs": len(sims),
                        "max_similarity": round(float(sims.max()), 6), "min_similarity": round(float(sims.min()), 6),
                        "images": [names[i] for i in nodes.tolist()]})
    records.sort(key=lambda r: (-r["size"], -r["max_similarity"], r["images"][0]))
    for g, record in enumerate(records):
        record["group"] = g + 1
    return records


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_pairs_csv(path: Path, pairs: Pairs, names: Sequence[str]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("path_a", "path_b", "similarity"))
            for start in range(0, len(pairs), 65536):  # a chunk at a time: no Python list of every pair
                stop = start + 65536
                for a, b, s in zip(pairs.first[start:stop].tolist(), pairs.second[start:stop].tolist(),
                                   pairs.similarity[start:stop].tolist()):
                    writer.writerow((names[a], names[b], f"{s:.6f}"))

    write_atomic(path, write)


def _search_facts(settings: DedupeSettings, dim: int) -> dict[str, Any]:
    backend = choose_backend(settings.backend)
    facts: dict[str, Any] = {"backend": backend, "tile": settings.tile}
    if backend == "torch":
        facts["tile_bytes_at_most"] = pairs_tile_bytes(dim, settings.tile)
    return facts


def _prepare(run: BackboneHarness, folder: str | Path, settings: DedupeSettings, output: Optional[str | Path],
             overwrite: bool, writes: Sequence[str]) -> tuple[Path, list[Path], list[str], dict[str, Any]]:
    """Checks before any weights are loaded: output folder, then the images."""
    out = check_output_folder(output or default_output_folder("dedupe", run.weights, folder, run.which),
                              writes, overwrite)
    files = list_folder_images(folder, out)
    names = relative_names(folder, files)
    identity = {"weights": run.identity(), "images": folder_identity(folder, files),
                "descriptor": settings.spec.describe(), "resize": asdict(settings.resize),
                "normalised": "L2 per image"}
    return out, files, names, identity


def _settings_record(settings: DedupeSettings, run: BackboneHarness) -> dict[str, Any]:
    return {**asdict(settings), "descriptor": settings.spec.describe(), "resize": asdict(settings.resize),
            "batch_size": run.batch_size}


def _index_folder(run: BackboneHarness, files: Sequence[Path], out: Path, identity: dict[str, Any],
                  settings: DedupeSettings, overwrite: bool,
                  names: Sequence[str]) -> tuple[nn.Module, torch.device, Any, Any]:
    """Load the backbone, check it suits the descriptor and index ``files`` into ``out``/index
    (continuing a partial index); (backbone, device, store, index report)."""
    loaded = run.load()
    settings.spec.check(loaded.module)
    store, report = index_images(loaded.module, files, out / INDEX, identity, settings, run, loaded.device, overwrite,
                                 names)
    return loaded.module, loaded.device, store, report


def run_dedupe(run: BackboneHarness, folder: str | Path, settings: DedupeSettings = DedupeSettings(),
               output: Optional[str | Path] = None, overwrite: bool = False) -> dict[str, Any]:
    """Index ``folder``, find the pairs above the threshold and their groups, write the
    results; returns the summary written in groups.json."""
    out, files, names, identity = _prepare(run, folder, settings, output, overwrite, DEDUPE_FILES)
    with folder_lock(out, "dino dedupe"):  # one process per output folder
        backbone, device, store, report = _index_folder(run, files, out, identity, settings, overwrite, names)
        return _find_and_write(out, Path(folder), store, names, settings, device,
                               {"index": report.describe(), "settings": _settings_record(settings, run),
                                "weights": run.describe(backbone)})


def _find_and_write(out: Path, folder: Path, store: Any, names: Sequence[str], settings: DedupeSettings,
                    device: torch.device, facts: dict[str, Any]) -> dict[str, Any]:
    """Pairs above the threshold among ``store``'s readable rows (L2-normalised descriptors),
    their groups, pairs.csv, groups.json and the contact sheet; returns the summary."""
    rows = store.readable_rows()
    whitening = folder_whitening(store, rows, settings.tile) if settings.whiten else None
    start = time.perf_counter()
    found = pairs_above(RowSubset(store.features, rows), settings.threshold, tile=settings.tile, transform=whitening,
                        device=device, max_pairs=settings.max_pairs, backend=settings.backend)
    seconds = time.perf_counter() - start
    pairs = Pairs(rows[found.first], rows[found.second], found.similarity)
    groups = group_records(connected_groups(store.rows, pairs.first, pairs.second), pairs, names)
    compared = len(rows) * (len(rows) - 1) // 2
    summary = {
        "command": "dedupe", "folder": str(Path(folder).resolve()), "threshold": settings.threshold,
        "pairs": len(pairs), "groups": len(groups), "images_in_groups": sum(g["size"] for g in groups),
        "index": facts["index"],
        "search": {**_search_facts(settings, store.dim), "pairs_compared": compared, "seconds": round(seconds, 3),
                   "pairs_per_s": round(compared / seconds, 1) if seconds > 0 else None, "device": str(device)},
        "whitening": whitening.describe() if whitening is not None else None,
        "settings": facts["settings"], "weights": facts["weights"],
        "descriptor_dim": store.dim, "paths": "relative to folder",
    }
    out.mkdir(parents=True, exist_ok=True)
    write_pairs_csv(out / "pairs.csv", pairs, names)
    _write_text(out / "groups.json", json.dumps({"summary": summary, "groups": groups}, indent=1) + "\n")
    shown = groups[: settings.sheet_groups]
    sheet = contact_sheet([[Path(folder) / name for name in g["images"]] for g in shown],
                          [f"group {g['group']}: {g['size']} images, similarity {g['min_similarity']:.3f}"
                           f"-{g['max_similarity']:.3f}" for g in shown],
                          names=[g["images"] for g in shown])
    write_atomic(out / "contact_sheet.png", lambda tmp: sheet.save(tmp, format="PNG"))
    log.info("dedupe: %d pairs above %g in %d groups; results in %s", len(pairs), settings.threshold, len(groups), out)
    return summary


@dataclass
class EmbeddedRows:
    """A ``dino embed`` folder seen as dedupe's index: every row readable."""

    features: np.ndarray
    rows: int
    dim: int

    def readable_rows(self) -> np.ndarray:
        return np.arange(self.rows)


def embedded_index(embedded: str | Path, settings: DedupeSettings) -> tuple[FeatureFolder, EmbeddedRows]:
    """The descriptors of a ``dino embed`` folder if they are the ones dedupe computes with
    ``settings`` ([CLS] of a --square input of --imsize pixels, L2-normalised); DataError otherwise."""
    folder = load_features(embedded)
    made = folder.manifest["settings"]
    wanted = {"pool": "cls", "square": True, "crop": settings.imsize, "normalize": True, "multiscale": False}
    different = {k: made.get(k) for k, v in wanted.items() if made.get(k) != v}
    if settings.pooling != "cls" or settings.flip_invariant:
        raise DataError("--embedded gives [CLS] descriptors of one view: use --descriptor cls without --flip-invariant")
    if different:
        raise DataError(f"{embedded} was embedded with {different}; dedupe's descriptors need dino embed --pool cls "
                        f"--square --crop {settings.imsize}")
    matrix = folder.descriptors
    return folder, EmbeddedRows(matrix, int(matrix.shape[0]), int(matrix.shape[1]))


def run_dedupe_embedded(run: BackboneHarness, images: str | Path, embedded: str | Path,
                        settings: DedupeSettings = DedupeSettings(), output: Optional[str | Path] = None,
                        overwrite: bool = False) -> dict[str, Any]:
    """Pairs and groups of the images of ``images`` from the descriptors ``dino embed`` wrote
    of them with ``run``'s weights into ``embedded`` (no backbone runs); the same results as
    :func:`run_dedupe` computes."""
    folder, rows = embedded_index(embedded, settings)
    manifest = folder.manifest
    if manifest["weights"].get("sha256") != weights_sha256(run.weights) or manifest["weights"].get("which") != run.which:
        raise DataError(f"{embedded} holds features of other weights ({manifest['weights'].get('path')})")
    if Path(manifest["data"]) != Path(images).resolve():
        raise DataError(f"{embedded} holds features of {manifest['data']}, not of {Path(images).resolve()}")
    out = check_output_folder(output or default_output_folder("dedupe", run.weights, images, run.which),
                              DEDUPE_FILES, overwrite)
    skipped = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    index = {"images": manifest["images"], "readable": manifest["count"], "unreadable": len(skipped),
             "embedded": str(Path(embedded).resolve()), "unreadable_files": skipped}
    return _find_and_write(out, Path(images), rows, folder.paths, settings, resolve_device(run.device),
                           {"index": index, "settings": asdict(settings), "weights": manifest["weights"]})


def run_query(run: BackboneHarness, folder: str | Path, queries: Sequence[str | Path],
              settings: DedupeSettings = DedupeSettings(), output: Optional[str | Path] = None,
              overwrite: bool = False) -> dict[str, Any]:
    """Index ``folder`` (or reuse its index), then write the top-k neighbours of each query
    image; returns the record written in neighbours.json."""
    query_files = [Path(q) for q in queries]
    if not query_files:
        raise DinoError("give at least one query image")
    for path in query_files:
        if not path.is_file():
            raise DataError(f"query image {path} does not exist")
        open_image(path)  # DataError when it cannot be decoded
    out, files, names, identity = _prepare(run, folder, settings, output, overwrite, QUERY_FILES)
    with folder_lock(out, "dino dedupe"):  # one process per output folder
        backbone, device, store, report = _index_folder(run, files, out, identity, settings, overwrite, names)
        rows = store.readable_rows()
        whitening = folder_whitening(store, rows, settings.tile) if settings.whiten else None
        described = describe_images(backbone, [ImageRequest(q) for q in query_files], settings.resize, settings.spec,
                                    device=device, batch_size=run.batch_size, num_workers=0, label="queries")
        k = min(settings.top_k, len(rows))
        sims, idx = nearest_neighbours(RowSubset(store.features, rows), F.normalize(described.descriptors, dim=1), k,
                                       bank_chunk=settings.tile, transform=whitening, device=device,
                                       backend=settings.backend)
        neighbours = []
        for q, (row_sims, row_idx) in enumerate(zip(sims.cpu().tolist(), idx.cpu().tolist())):
            neighbours.append({"query": str(query_files[q]),
                               "neighbours": [{"path": names[int(rows[j])], "similarity": round(s, 6)}
                                              for s, j in zip(row_sims, row_idx)]})
        record = {"summary": {"command": "dedupe --query", "folder": str(Path(folder).resolve()), "top_k": k,
                              "index": report.describe(),
                              "whitening": whitening.describe() if whitening is not None else None,
                              "settings": _settings_record(settings, run), "weights": run.describe(backbone),
                              "paths": "relative to folder"},
                  "queries": neighbours}
        out.mkdir(parents=True, exist_ok=True)

        def write_csv(tmp: str) -> None:
            with open(tmp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(("query", "rank", "path", "similarity"))
                for entry in neighbours:
                    for rank, hit in enumerate(entry["neighbours"], start=1):
                        writer.writerow((entry["query"], rank, hit["path"], f"{hit['similarity']:.6f}"))

        write_atomic(out / "neighbours.csv", write_csv)
        _write_text(out / "neighbours.json", json.dumps(record, indent=1) + "\n")
        return record
