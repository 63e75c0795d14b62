"""``dino eval copydetection``: the Copydays protocol of the DINO paper (Table 4).

Every image is resized to ``imsize`` x ``imsize`` (bicubic) and described by its [CLS] output
concatenated with the GeM (p = 4) pooling of the last layer's patch tokens. The database is
the originals plus the optional distractors. With a whitening folder, descriptors are centred
on that set's mean and PCA-whitened as learned there (:mod:`.whitening`: the eigenvectors of
the set's covariance; with ``protocol="reference"``, of its uncentred second moment, as the
reference script computes them); then every
descriptor is L2-normalised. Each query's ``top_k`` nearest database images (cosine; the
reference keeps 20) give its AP from the ranks of its originals among them, as the INRIA
Holidays evaluation defines it (:func:`.ranking_metrics.holidays_ap`); mAP per query block,
in percent. Unreadable distractor or whitening images are skipped and counted; an unreadable
original or query is an error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from dinossl.errors import DinoError
from dinossl.eval.results import write_results
from dinossl.inference import BackboneHarness, LoadedBackbone
from dinossl.outputs import default_output_folder, usable_output_folder
from dinossl.eval.retrieval.copydays_files import CopydaysLayout, open_copydays
from dinossl.eval.retrieval.descriptors import (
    DescriptorSpec,
    ImageRequest,
    Resize,
    describe_images,
)
from dinossl.eval.retrieval.image_files import check_some_decode, list_images
from dinossl.eval.retrieval.ranking_metrics import holidays_ap
from dinossl.eval.retrieval.whitening import Whitening, learn_whitening
from dinossl.eval.search import nearest_neighbours
from dinossl.eval.validation import PROTOCOLS, require_choice

log = logging.getLogger("dinossl")

PROTOCOL = "Copydays copy detection ([CLS] + GeM, optional whitening, cosine), Holidays AP"
RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class CopyDetectionSettings:
    imsize: int = 320
    top_k: int = 20  # database images ranked per query (the reference's 20)
    gem_p: float = 4.0
    protocol: str = "dinossl"  # "reference": the whitening's eigenvectors from the uncentred second moment

    def __post_init__(self) -> None:
        if self.imsize < 1 or self.top_k < 1:
            raise DinoError(f"imsize and top_k must be positive, got {self.imsize} and {self.top_k}")
        require_choice(self, "protocol", PROTOCOLS)

    @property
    def resize(self) -> Resize:
        return Resize("square", self.imsize)

    @property
    def spec(self) -> DescriptorSpec:
        return DescriptorSpec("cls+gem", gem_p=self.gem_p)


@dataclass(frozen=True)
class ExtraImages:
    """Distractors (added to the database) and whitening images (whitening learned on them)."""

    distractors: tuple[Path, ...] = ()
    whitening: tuple[Path, ...] = ()


def open_extra_images(distractors: Optional[str | Path], whitening: Optional[str | Path]) -> ExtraImages:
    """The image files of the optional folders (their whole trees), checked."""
    found = {}
    for role, folder in (("distractors", distractors), ("whitening", whitening)):
        if folder is None:
            found[role] = ()
            continue
        files = list_images(folder, f"{role} folder", recursive=True)
        check_some_decode(files, f"{role} folder {folder}")
        found[role] = tuple(files)
    return ExtraImages(found["distractors"], found["whitening"])


def query_scores(ranked: torch.Tensor, similarities: torch.Tensor, positives: Sequence[Sequence[int]],
                 names: Sequence[str], database_names: Sequence[str], queries: Sequence[Path]) -> dict[str, Any]:
    """mAP (percent) and per-query details of one block from its (Q, k) ranked database indices."""
    per_query = []
    for q, (row, sims) in enumerate(zip(ranked.tolist(), similarities.tolist())):
        ap = holidays_ap(row, positives[q])
        wanted = set(positives[q])
        per_query.append({"query": queries[q].name, "ap": 100.0 * ap,
                          "originals": [names[i] for i in positives[q]],
                          "original_ranks": [rank for rank, index in enumerate(row) if index in wanted],
                          "nearest": database_names[row[0]], "nearest_similarity": sims[0]})
    return {"mAP": sum(p["ap"] for p in per_query) / len(per_query), "queries": len(per_query), "per_query": per_query}


def copydays_protocol(backbone: nn.Module | LoadedBackbone, layout: CopydaysLayout, extra: ExtraImages,
                      settings: CopyDetectionSettings, run: BackboneHarness, device: torch.device) -> dict[str, Any]:
    """Descriptors, whitening, search and mAP per block (see the module docstring)."""
    common = dict(device=device, batch_size=run.batch_size, num_workers=run.workers, progress=run.progress)

    def describe(paths: Sequence[Path], label: str, skip: bool = False):
        return describe_images(backbone, [ImageRequest(p) for p in paths], settings.resize, settings.spec,
                               label=label, skip_unreadable=skip, **common)

    originals = describe(layout.originals, "originals")
    database = [originals.descriptors]
    database_names = [p.name for p in layout.originals]
    skipped: dict[str, int] = {}
    if extra.distractors:
        distractors = describe(extra.distractors, "distractors", skip=True)
        database.append(distractors.descriptors)
        database_names += [extra.distractors[i].name for i in distractors.kept.tolist()]
        skipped["distractors"] = len(distractors.unreadable)
    transform: Optional[Whitening] = None
    if extra.whitening:
        learning = describe(extra.whitening, "whitening set", skip=True)
        skipped["whitening"] = len(learning.unreadable)
        transform = learn_whitening([learning.descriptors], centred=settings.protocol != "reference")
    bank = torch.cat(database)
    blocks = {}
    names = [p.name for p in layout.originals]
    for block in layout.blocks:
        queries = describe(block.queries, block.name)
        sims, ranked = nearest_neighbours(bank, queries.descriptors, k=min(settings.top_k, bank.shape[0]),
                                          transform=transform, device=device)
        blocks[block.name] = query_scores(ranked.cpu(), sims.cpu(), block.positives, names, database_names,
                                          block.queries)
        log.info("copy detection: %s mAP %.2f", block.name, blocks[block.name]["mAP"])
    return {
        "blocks": blocks, "units": "percent", "database_images": int(bank.shape[0]),
        "descriptor_dim": int(bank.shape[1]), "unreadable_skipped": skipped,
        "whitening": transform.describe() if transform is not None else None,
    }


def run_copydetection(run: BackboneHarness, data: str | Path, distractors: Optional[str | Path] = None,
                      whitening: Optional[str | Path] = None,
                      settings: CopyDetectionSettings = CopyDetectionSettings(),
                      output: Optional[str | Path] = None, overwrite: bool = False) -> dict[str, Any]:
    """Check the layout, the extra folders and the output folder, then load the weights,
    evaluate and write ``<output>/results.json``; returns the record written."""
    layout = open_copydays(data)
    folder = usable_output_folder(output or default_output_folder("copydetection", run.weights, data, run.which),
                                  overwrite)
    check_some_decode(layout.originals, f"{layout.root / 'original'}")
    for block in layout.blocks:
        check_some_decode(block.queries, f"{layout.root / block.name}")
    extra = open_extra_images(distractors, whitening)
    loaded = run.load()
    backbone, device = loaded.module, loaded.device
    settings.spec.check(backbone)
    start = time.perf_counter()
    results = copydays_protocol(loaded, layout, extra, settings, run, device)
    record = {
        "evaluation": "copydetection", "protocol": PROTOCOL,
        "weights": run.describe(backbone),
        "data": {**layout.describe(), "distractors": str(Path(distractors).resolve()) if distractors else None,
                 "distractor_images": len(extra.distractors),
                 "whitening": str(Path(whitening).resolve()) if whitening else None,
                 "whitening_images": len(extra.whitening)},
        "settings": {**asdict(settings), "resize": asdict(settings.resize), "descriptor": settings.spec.describe(),
                     "batch_size": run.batch_size},
        "results": results, "device": str(device), "wall_s": round(time.perf_counter() - start, 1),
    }
    write_results(Path(folder) / RESULTS_FILE, record, overwrite=True)
    log.info("results written to %s", Path(folder) / RESULTS_FILE)
    return record
