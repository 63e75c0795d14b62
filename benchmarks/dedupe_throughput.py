"""Dedupe throughput and peak memory: pairs/s of the thresholded search and queries/s of the
top-k search on N synthetic descriptors, and optionally images/s of indexing a real folder;
writes JSON.

Synthetic descriptors are random unit vectors of dimension D with some planted near-duplicate
pairs, written chunk by chunk into a float16 memory-mapped array as ``dino dedupe`` stores them
(so the full float32 matrix never exists in memory). Pairs/s is N(N-1)/2 (every pair compared)
divided by the search time. Memory: the process's resident set before the search and its peak
(``ru_maxrss``, which includes the mapped descriptors once read), the peak CUDA allocation on a
GPU, and the tile bound of ``dinossl.eval.search.pairs_tile_bytes``.

    python benchmarks/dedupe_throughput.py --out bench-dedupe.json
    python benchmarks/dedupe_throughput.py --n 2000 --queries 50 --folder photos/ --weights dino_vits16 \\
        --out bench-dedupe-small.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dinossl.study.memory import PeakMemory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, peak_memory, peak_resident_mb, resident_mb, synchronize  # noqa: E402

MIB = 2**20


def synthetic_store(path: Path, n: int, dim: int, planted: int, seed: int, chunk: int = 16384) -> np.ndarray:
    """(n, dim) float16 unit rows in a memory-mapped .npy; rows 2i+1 copy rows 2i plus noise for
    the first ``planted`` pairs."""
    generator = np.random.default_rng(seed)
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for start in range(0, n, chunk):
        block = generator.standard_normal((min(chunk, n - start), dim)).astype(np.float32)
        for local in range(0, len(block) - 1, 2):
            if (start + local) // 2 < planted:
                block[local + 1] = block[local] + 0.05 * generator.standard_normal(dim).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        rows[start:start + len(block)] = block.astype(np.float16)
    rows.flush()
    del rows
    return np.load(path, mmap_mode="r")


def search_benchmark(args: argparse.Namespace, device: torch.device) -> dict:
    from dinossl.eval.search import (
        choose_backend,
        nearest_neighbours,
        pairs_above,
        pairs_tile_bytes,
    )

    with tempfile.TemporaryDirectory() as tmp:
        rows = synthetic_store(Path(tmp) / "features.npy", args.n, args.dim, args.planted, args.seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        before = round(resident_mb() * MIB)
        search_peak = PeakMemory(torch.device("cpu"))
        search_peak.reset()  # the peak of the search alone, not of writing the synthetic store
        start = time.perf_counter()
        found = pairs_above(rows, args.threshold, tile=args.tile, device=device, backend=args.backend)
        synchronize(device)
        seconds = time.perf_counter() - start
        search_peak_bytes = search_peak.read()
        search_peak.reset()  # the top-k queries' own peak below
        compared = args.n * (args.n - 1) // 2
        planted_found = int(((found.second == found.first + 1) & (found.first % 2 == 0)
                             & (found.first // 2 < args.planted)).sum())
        queries = min(args.queries, args.n)
        start = time.perf_counter()
        nearest_neighbours(rows, rows[:queries], min(args.k, args.n), bank_chunk=args.bank_chunk, device=device,
                           backend=args.backend)
        synchronize(device)
        query_seconds = time.perf_counter() - start
        record = {
            "descriptors": args.n, "dim": args.dim, "stored_as": "float16 memory map",
            "stored_bytes": args.n * args.dim * 2, "backend": choose_backend(args.backend), "tile": args.tile,
            "tile_bytes_bound": pairs_tile_bytes(args.dim, args.tile) if choose_backend(args.backend) == "torch" else None,
            "threshold": args.threshold, "pairs_found": len(found), "planted_pairs": args.planted,
            "planted_pairs_found": planted_found, "pairs_compared": compared,
            "search_s": round(seconds, 3), "pairs_per_s": compared / seconds,
            "topk_queries": queries, "k": min(args.k, args.n), "topk_s": round(query_seconds, 3),
            "queries_per_s": queries / query_seconds,
            "rss_before_search_bytes": before, "process_peak_rss_bytes": round(peak_resident_mb() * MIB),
            "search_peak_rss_bytes": search_peak_bytes,
            "search_peak_rss_growth_bytes": (search_peak_bytes or 0) - before,
            "topk_peak_rss_growth_bytes": (search_peak.read() or 0) - before,
        }
        if device.type == "cuda":
            record["peak_cuda_bytes"] = round(peak_memory(device)["peak_memory_mb"] * MIB)
        del rows
    return record


def folder_benchmark(args: argparse.Namespace, device: torch.device) -> dict:
    from dinossl.eval.retrieval.dedupe import (
        DedupeSettings,
        index_images,
        list_folder_images,
    )
    from dinossl.eval.search import RowSubset, pairs_above
    from dinossl.inference import BackboneHarness

    settings = DedupeSettings(threshold=args.threshold, imsize=args.imsize, tile=args.tile, backend=args.backend)
    run = BackboneHarness(args.weights, device=str(device), batch_size=args.batch_size,
                          num_workers=args.num_workers, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        files = list_folder_images(args.folder, Path(tmp) / "out")
        if args.weights:
            backbone = run.load().module
        else:
            from dinossl.models.vit import build_vit

            torch.manual_seed(0)
            backbone = build_vit("vit_small", patch_size=16).to(device).eval()
        store, report = index_images(backbone, files, Path(tmp) / "index", {"benchmark": True}, settings, run, device)
        rows = store.readable_rows()
        start = time.perf_counter()
        found = pairs_above(RowSubset(store.features, rows), args.threshold, tile=args.tile, device=device,
                            backend=args.backend)
        synchronize(device)
        seconds = time.perf_counter() - start
        compared = len(rows) * (len(rows) - 1) // 2
        return {
            "folder": str(Path(args.folder).resolve()), "images": len(files), "weights": args.weights or
            "random-init ViT-S/16", "imsize": args.imsize, "descriptor": settings.spec.describe(),
            "batch_size": args.batch_size, "num_workers": args.num_workers,
            "index_s": round(report.seconds, 3), "images_per_s": report.computed / report.seconds,
            "unreadable": len(report.unreadable), "dim": store.dim, "pairs_found": len(found),
            "search_s": round(seconds, 3), "pairs_per_s": compared / seconds if seconds > 0 else None,
            "process_peak_rss_bytes": round(peak_resident_mb() * MIB),
            **({"peak_cuda_bytes": round(peak_memory(device)["peak_memory_mb"] * MIB)} if device.type == "cuda" else {}),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="synthetic descriptors (default 100000)")
    parser.add_argument("--dim", type=int, default=384, help="their dimension (default 384, ViT-S [CLS])")
    parser.add_argument("--planted", type=int, default=100, help="near-duplicate pairs planted (default 100)")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--tile", type=int, default=4096)
    parser.add_argument("--queries", type=int, default=1000, help="top-k queries timed (default 1000)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--bank-chunk", type=int, default=65536)
    parser.add_argument("--backend", choices=("auto", "torch", "faiss"), default="torch")
    parser.add_argument("--folder", type=Path, help="also index this image folder (images/s)")
    parser.add_argument("--weights", default="", help="weights for --folder (default: random-init ViT-S/16)")
    parser.add_argument("--imsize", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    from dinossl.runtime.device import resolve_device

    device = resolve_device(args.device)
    report = {
        "benchmark": "dedupe_throughput", "device": str(device), "machine": describe(device),
        "synthetic": search_benchmark(args, device),
    }
    if args.folder is not None:
        report["folder"] = folder_benchmark(args, device)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
