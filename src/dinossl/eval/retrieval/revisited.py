"""``dino eval retrieval``: the revisited Oxford / Paris protocol (Radenovic et al. 2018) as the
DINO reference runs it.

Every database and query image is shrunk so its longer side is at most ``imsize`` (aspect
kept; Lanczos), described by its [CLS] output (``multiscale``: averaged over scales 1, 1/sqrt 2
and 1/2), L2-normalised per image; the database is ranked for each query by cosine
similarity. Queries are the whole query images, as in the reference; ``crop_queries`` crops
them to the benchmark's ``bbx`` first, as the benchmark's authors do. Scores: mAP and mP@k
(k = 1, 5, 10) in the Medium and Hard settings (:mod:`.ranking_metrics`), in percent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from dinossl.errors import DataError, DinoError
from dinossl.eval.results import write_results
from dinossl.inference import BackboneHarness, LoadedBackbone
from dinossl.outputs import default_output_folder, usable_output_folder
from dinossl.eval.retrieval.benchmark_files import RevisitedBenchmark, open_revisited
from dinossl.eval.retrieval.descriptors import (
    MULTISCALE,
    DescriptorSpec,
    ImageRequest,
    Resize,
    describe_images,
)
from dinossl.eval.retrieval.image_files import check_some_decode
from dinossl.eval.retrieval.ranking_metrics import PRECISION_KS, revisited_scores
from dinossl.eval.search import nearest_neighbours

log = logging.getLogger("dinossl")

PROTOCOL = "revisited Oxford/Paris retrieval ([CLS], cosine), Medium and Hard"
RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class RetrievalSettings:
    """The protocol's choices (the reference's defaults; its published runs use imsize 512)."""

    imsize: int = 224
    multiscale: bool = False
    crop_queries: bool = False

    def __post_init__(self) -> None:
        if self.imsize < 1:
            raise DinoError(f"imsize must be positive, got {self.imsize}")

    @property
    def resize(self) -> Resize:
        return Resize("longest", self.imsize)

    @property
    def spec(self) -> DescriptorSpec:
        return DescriptorSpec("cls", MULTISCALE if self.multiscale else (1.0,))


def _percent(value: Optional[float]) -> Optional[float]:
    return None if value is None else 100.0 * value


def _query_requests(benchmark: RevisitedBenchmark, crop: bool) -> list[ImageRequest]:
    return [ImageRequest(path, truth.bbx if crop else None) for path, truth in zip(benchmark.query_paths, benchmark.gnd)]


def revisited_protocol(backbone: nn.Module | LoadedBackbone, benchmark: RevisitedBenchmark, settings: RetrievalSettings,
                       run: BackboneHarness, device: torch.device) -> dict[str, Any]:
    """Descriptors, rankings and scores of one benchmark (see the module docstring)."""
    common = dict(device=device, batch_size=run.batch_size, num_workers=run.workers, progress=run.progress)
    database = describe_images(backbone, [ImageRequest(p) for p in benchmark.database_paths], settings.resize,
                               settings.spec, label="database", **common)
    queries = describe_images(backbone, _query_requests(benchmark, settings.crop_queries), settings.resize,
                              settings.spec, label="queries", **common)
    _, ranking = nearest_neighbours(database.descriptors, queries.descriptors, k=len(benchmark.imlist),
                                    device=device)
    scores = revisited_scores(ranking.cpu().numpy(), [(q.easy, q.hard, q.junk) for q in benchmark.gnd])
    summary = {setting: {"mAP": _percent(s["mAP"]), **{f"mP@{k}": _percent(v) for k, v in s["mP@k"].items()},
                         "queries_scored": s["queries_scored"]}
               for setting, s in scores.items()}
    per_query = [
        {"query": name,
         **{f"{setting}_ap": _percent(scores[setting]["ap"][i]) for setting in scores},
         "top": [benchmark.imlist[j] for j in ranking[i, :5].tolist()]}
        for i, name in enumerate(benchmark.qimlist)
    ]
    return {**summary, "per_query": per_query, "units": "percent",
            "descriptor_dim": int(database.descriptors.shape[1]),
            "colour_conversions": {k: database.notes.get(k, 0) + queries.notes.get(k, 0)
                                   for k in set(database.notes) | set(queries.notes)}}


def run_retrieval(run: BackboneHarness, data: str | Path, dataset: str, settings: RetrievalSettings = RetrievalSettings(),
                  output: Optional[str | Path] = None, overwrite: bool = False) -> dict[str, Any]:
    """Check the benchmark and the output folder, then load the weights, evaluate and write
    ``<output>/results.json``; returns the record written."""
    benchmark = open_revisited(data, dataset)
    if settings.crop_queries:
        missing = [name for name, q in zip(benchmark.qimlist, benchmark.gnd) if q.bbx is None]
        if missing:
            raise DataError(f"--crop-queries needs a bbx for every query; {len(missing)} have none (first: {missing[0]})")
    folder = usable_output_folder(output or default_output_folder("retrieval", run.weights, dataset, run.which), overwrite)
    check_some_decode(benchmark.database_paths, f"{benchmark.images} (database)")
    check_some_decode(benchmark.query_paths, f"{benchmark.images} (queries)")
    loaded = run.load()
    backbone, device = loaded.module, loaded.device
    start = time.perf_counter()
    results = revisited_protocol(loaded, benchmark, settings, run, device)
    record = {
        "evaluation": "retrieval", "protocol": PROTOCOL,
        "weights": run.describe(backbone), "data": benchmark.describe(),
        "settings": {**asdict(settings), "resize": asdict(settings.resize), "descriptor": settings.spec.describe(),
                     "queries": "bbx crops" if settings.crop_queries else "whole query images",
                     "ranking": "cosine similarity of L2-normalised descriptors",
                     "precision_ks": list(PRECISION_KS), "batch_size": run.batch_size},
        "results": results, "device": str(device), "wall_s": round(time.perf_counter() - start, 1),
    }
    write_results(Path(folder) / RESULTS_FILE, record, overwrite=True)
    log.info("results written to %s", Path(folder) / RESULTS_FILE)
    return record
