"""``dino eval retrieval|copydetection``: nearest-neighbour evaluations on global descriptors
(the paper's Tables 3 and 4)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinossl.cli.common import (
    HelpFormatter,
    add_device,
    add_output,
    add_settings,
    add_weights,
    backbone_harness,
    option,
    read_settings,
)
from dinossl.eval.retrieval.copydays import CopyDetectionSettings, run_copydetection
from dinossl.eval.retrieval.revisited import RetrievalSettings, run_retrieval
from dinossl.eval.validation import PROTOCOLS

RETRIEVAL = {"retrieval": RetrievalSettings}
RETRIEVAL_OPTIONS = [
    option("--imsize", "retrieval.imsize", "shrink images so the longer side is at most this (the reference's "
           "published runs use 512)", type=int),
    option("--multiscale", "retrieval.multiscale", "average the [CLS] of scales 1, 1/sqrt(2), 1/2, then "
           "L2-normalise", action="store_true"),
    option("--crop-queries", "retrieval.crop_queries", "crop the queries to their bbx (the benchmark authors' "
           "protocol; the reference uses whole query images)", action="store_true"),
]
COPIES = {"copydetection": CopyDetectionSettings}
COPY_OPTIONS = [
    option("--imsize", "copydetection.imsize", "square input size, bicubic", type=int),
    option("--top-k", "copydetection.top_k", "database images ranked per query for AP (the reference's 20)",
           type=int),
    option("--protocol", "copydetection.protocol", "reference: learn the whitening's eigenvectors from the "
           "uncentred second moment, as the reference script does", choices=PROTOCOLS),
]


def add_run_arguments(parser: argparse.ArgumentParser, default_batch: int, output_default: str) -> None:
    """WEIGHTS first, then what every descriptor command takes: network, device, batches, output."""
    add_weights(parser)
    add_device(parser)
    parser.add_argument("--batch-size", type=int, default=default_batch, help="images per forward pass")
    parser.add_argument("--num-workers", type=int, default=4, help="image-decoding processes")
    add_output(parser, output_default)


def register(subparsers: argparse._SubParsersAction) -> None:
    retrieval = subparsers.add_parser(
        "retrieval", formatter_class=HelpFormatter,
        help="image retrieval on revisited Oxford or Paris: mAP Medium/Hard, mP@1/5/10 (paper Table 3)",
        description="Ranks ROOT/<dataset>/jpg for each query by cosine similarity of [CLS] descriptors and scores "
        "the rankings with the benchmark's AP (junk removed, trapezoid rule) and mP@k, Medium and Hard. Queries are "
        "the whole query images as in the DINO reference (--crop-queries: their bbx regions). Writes results.json.",
    )
    add_run_arguments(retrieval, 16, "retrieval-<dataset>-<weights>")
    retrieval.add_argument("--data", required=True, type=Path, metavar="ROOT",
                           help="folder holding <dataset>/jpg/ and <dataset>/gnd_<dataset>.pkl")
    retrieval.add_argument("--dataset", required=True, choices=("roxford5k", "rparis6k"))
    add_settings(retrieval, RETRIEVAL, RETRIEVAL_OPTIONS)
    retrieval.set_defaults(func=run_retrieval_command)

    copies = subparsers.add_parser(
        "copydetection", formatter_class=HelpFormatter,
        help="copy detection on Copydays: mAP per block, strong first (paper Table 4)",
        description="Searches ROOT/original (+ --distractors) for each copy in ROOT/strong (and jpegqual/*, crops/* "
        "when present) with [CLS]+GeM descriptors of square resized images, optionally whitened (--whitening), and "
        "reports each block's mAP as the Holidays evaluation defines AP. Writes results.json.",
    )
    add_run_arguments(copies, 16, "copydetection-<data>-<weights>")
    copies.add_argument("--data", required=True, type=Path, metavar="ROOT",
                        help="Copydays folder with original/ and strong/ (optionally jpegqual/<q>/, crops/<pct>/)")
    copies.add_argument("--distractors", type=Path, metavar="DIR",
                        help="images added to the database (the paper: 10k YFCC100M images; default: none)")
    copies.add_argument("--whitening", type=Path, metavar="DIR",
                        help="images the whitening is learned on (the paper: 20k other YFCC100M images; default: "
                        "no whitening)")
    add_settings(copies, COPIES, COPY_OPTIONS)
    copies.set_defaults(func=run_copydetection_command)


def run_retrieval_command(args: argparse.Namespace) -> int:
    settings = read_settings(args, RETRIEVAL, RETRIEVAL_OPTIONS)["retrieval"]
    record = run_retrieval(backbone_harness(args), args.data, args.dataset, settings, args.output, args.overwrite)
    results = record["results"]
    for setting in ("medium", "hard"):
        scores = results[setting]
        print(f"{args.dataset} {setting:6s}  mAP {scores['mAP']:.2f}  mP@1 {scores['mP@1']:.2f}  "
              f"mP@5 {scores['mP@5']:.2f}  mP@10 {scores['mP@10']:.2f}")
    return 0


def run_copydetection_command(args: argparse.Namespace) -> int:
    settings = read_settings(args, COPIES, COPY_OPTIONS)["copydetection"]
    record = run_copydetection(backbone_harness(args), args.data, args.distractors, args.whitening, settings,
                               args.output, args.overwrite)
    for name, block in record["results"]["blocks"].items():
        print(f"{name:16s} mAP {block['mAP']:.2f}  ({block['queries']} queries)")
    return 0
