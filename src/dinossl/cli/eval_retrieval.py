"""``dino eval retrieval|copydetection``: nearest-neighbour evaluations on global descriptors
(the paper's Tables 3 and 4)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinossl.cli.eval_features import WEIGHTS_HELP


def add_run_arguments(parser: argparse.ArgumentParser, default_batch: int, output_default: str) -> None:
    """WEIGHTS first, then what every descriptor command takes: network, device, batches, output."""
    parser.add_argument("weights", metavar="WEIGHTS", help=WEIGHTS_HELP)
    parser.add_argument("--which", choices=("teacher", "student"), default="teacher",
                        help="network of a training checkpoint (default: teacher)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=default_batch,
                        help=f"images per forward pass (default {default_batch})")
    parser.add_argument("--num-workers", type=int, default=4, help="image-decoding processes (default 4)")
    parser.add_argument("--output", type=Path, metavar="FOLDER", default=None,
                        help=f"new or empty output folder (default: {output_default})")
    parser.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                        help="write into a non-empty output folder, replacing files of the same names")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def backbone_run(args: argparse.Namespace):
    from dinossl.eval.retrieval.backbone_run import BackboneRun

    return BackboneRun(weights=args.weights, which=args.which, device=args.device, batch_size=args.batch_size,
                       num_workers=args.num_workers, progress=not args.no_progress)


def register(subparsers: argparse._SubParsersAction) -> None:
    retrieval = subparsers.add_parser(
        "retrieval", help="image retrieval on revisited Oxford or Paris: mAP Medium/Hard, mP@1/5/10 (paper Table 3)",
        description="Ranks ROOT/<dataset>/jpg for each query by cosine similarity of [CLS] descriptors and scores "
        "the rankings with the benchmark's AP (junk removed, trapezoid rule) and mP@k, Medium and Hard. Queries are "
        "the whole query images as in the DINO reference (--crop-queries: their bbx regions). Writes results.json.",
    )
    add_run_arguments(retrieval, 16, "retrieval-<dataset>-<weights>")
    retrieval.add_argument("--data", required=True, type=Path, metavar="ROOT",
                           help="folder holding <dataset>/jpg/ and <dataset>/gnd_<dataset>.pkl")
    retrieval.add_argument("--dataset", required=True, choices=("roxford5k", "rparis6k"))
    retrieval.add_argument("--imsize", type=int, default=224,
                           help="shrink images so the longer side is at most this (default 224; the reference's "
                           "published runs use 512)")
    retrieval.add_argument("--multiscale", action="store_true",
                           help="average the [CLS] of scales 1, 1/sqrt(2), 1/2, then L2-normalise")
    retrieval.add_argument("--crop-queries", action="store_true",
                           help="crop the queries to their bbx (the benchmark authors' protocol)")
    retrieval.set_defaults(func=run_retrieval)

    copies = subparsers.add_parser(
        "copydetection", help="copy detection on Copydays: mAP per block, strong first (paper Table 4)",
        description="Searches ROOT/original (+ --distractors) for each copy in ROOT/strong (and jpegqual/*, crops/* "
        "when present) with [CLS]+GeM descriptors of square resized images, optionally whitened (--whitening), and "
        "reports each block's mAP as the Holidays evaluation defines AP. Writes results.json.",
    )
    add_run_arguments(copies, 16, "copydetection-<data>-<weights>")
    copies.add_argument("--data", required=True, type=Path, metavar="ROOT",
                        help="Copydays folder with original/ and strong/ (optionally jpegqual/<q>/, crops/<pct>/)")
    copies.add_argument("--distractors", type=Path, metavar="DIR",
                        help="images added to the database (the paper: 10k YFCC100M images)")
    copies.add_argument("--whitening", type=Path, metavar="DIR",
                        help="images the whitening is learned on (the paper: 20k other YFCC100M images)")
    copies.add_argument("--imsize", type=int, default=320, help="square input size, bicubic (default 320)")
    copies.add_argument("--top-k", type=int, default=20,
                        help="database images ranked per query for AP (default 20, as the reference)")
    copies.set_defaults(func=run_copydetection)


def run_retrieval(args: argparse.Namespace) -> int:
    from dinossl.eval.retrieval.revisited import RetrievalSettings
    from dinossl.eval.retrieval.revisited import run_retrieval as run

    settings = RetrievalSettings(imsize=args.imsize, multiscale=args.multiscale, crop_queries=args.crop_queries)
    record = run(backbone_run(args), args.data, args.dataset, settings, args.output, args.overwrite)
    results = record["results"]
    for setting in ("medium", "hard"):
        scores = results[setting]
        print(f"{args.dataset} {setting:6s}  mAP {scores['mAP']:.2f}  mP@1 {scores['mP@1']:.2f}  "
              f"mP@5 {scores['mP@5']:.2f}  mP@10 {scores['mP@10']:.2f}")
    return 0


def run_copydetection(args: argparse.Namespace) -> int:
    from dinossl.eval.retrieval.copydays import CopyDetectionSettings
    from dinossl.eval.retrieval.copydays import run_copydetection as run

    settings = CopyDetectionSettings(imsize=args.imsize, top_k=args.top_k)
    record = run(backbone_run(args), args.data, args.distractors, args.whitening, settings, args.output,
                 args.overwrite)
    for name, block in record["results"]["blocks"].items():
        print(f"{name:16s} mAP {block['mAP']:.2f}  ({block['queries']} queries)")
    return 0
