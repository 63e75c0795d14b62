"""``dino dedupe``: near-duplicate images of a folder tree, or the nearest neighbours of images."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinossl.cli.common import HelpFormatter, add_settings, backbone_harness, option, read_settings
from dinossl.cli.eval_retrieval import add_run_arguments
from dinossl.eval.retrieval.dedupe import DedupeSettings, run_dedupe, run_dedupe_embedded, run_query

SECTIONS = {"dedupe": DedupeSettings}
OPTIONS = [
    option("--threshold", "dedupe.threshold", "cosine similarity above which two images pair (depends on the "
           "weights and descriptor; lower after --whiten)", type=float),
    option("--descriptor", "dedupe.pooling", "[CLS], or [CLS] + GeM-pooled patch tokens",
           choices=("cls", "cls+gem")),
    option("--imsize", "dedupe.imsize", "square input size, bicubic", type=int),
    option("--flip-invariant", "dedupe.flip_invariant", "average each descriptor with its mirror image's, so "
           "left-right flips match", action="store_true"),
    option("--whiten", "dedupe.whiten", "PCA-whiten with statistics of the folder itself", action="store_true"),
    option("--top-k", "dedupe.top_k", "neighbours per query image", type=int),
    option("--tile", "dedupe.tile", "rows per similarity tile; memory grows with its square", type=int),
    option("--max-pairs", "dedupe.max_pairs", "stop when more pairs than this are above the threshold", type=int),
    option("--sheet-groups", "dedupe.sheet_groups", "groups on the contact sheet", type=int),
    option("--backend", "dedupe.backend", "search with torch tiles or faiss (auto: faiss when installed)",
           choices=("auto", "torch", "faiss")),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dedupe", formatter_class=HelpFormatter,
        help="find near-duplicate images in a folder tree (or an image's nearest neighbours)",
        description="Indexes every image under FOLDER (descriptors stored as they are computed in OUTPUT/index, "
        "resumable), then writes every pair above --threshold (pairs.csv), the groups they form (groups.json) and "
        "a contact sheet of the top groups; with --query, the top-k neighbours of the given images instead.",
    )
    add_run_arguments(parser, 32, "dedupe-<folder>-<weights>")
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="folder of images (searched recursively)")
    parser.add_argument("--embedded", type=Path, metavar="EMBED_FOLDER",
                        help="take the descriptors from this dino embed folder of FOLDER (--pool cls --square "
                        "--crop <imsize>) instead of computing them")
    parser.add_argument("--query", nargs="+", metavar="IMAGE",
                        help="list these images' nearest neighbours instead (default: find all pairs)")
    add_settings(parser, SECTIONS, OPTIONS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = read_settings(args, SECTIONS, OPTIONS)["dedupe"]
    if args.query:
        record = run_query(backbone_harness(args), args.folder, args.query, settings, args.output, args.overwrite)
        for entry in record["queries"]:
            print(entry["query"])
            for rank, hit in enumerate(entry["neighbours"], start=1):
                print(f"  {rank:3d}  {hit['similarity']:.4f}  {hit['path']}")
        return 0
    if args.embedded is not None:
        summary = run_dedupe_embedded(backbone_harness(args), args.folder, args.embedded, settings, args.output,
                                      args.overwrite)
    else:
        summary = run_dedupe(backbone_harness(args), args.folder, settings, args.output, args.overwrite)
    index = summary["index"]
    print(f"indexed {index['readable']} images ({index['unreadable']} unreadable); {summary['pairs']} pairs above "
          f"{summary['threshold']} in {summary['groups']} groups ({summary['images_in_groups']} images)")
    return 0
