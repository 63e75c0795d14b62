"""``dino dedupe``: near-duplicate images of a folder tree, or the nearest neighbours of images."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinossl.cli.eval_retrieval import add_run_arguments, backbone_run


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dedupe", help="find near-duplicate images in a folder tree (or an image's nearest neighbours)",
        description="Indexes every image under FOLDER (descriptors stored as they are computed in OUTPUT/index, "
        "resumable), then writes every pair above --threshold (pairs.csv), the groups they form (groups.json) and "
        "a contact sheet of the top groups; with --query, the top-k neighbours of the given images instead.",
    )
    add_run_arguments(parser, 32, "dedupe-<folder>-<weights>")
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="folder of images (searched recursively)")
    parser.add_argument("--threshold", type=float, default=0.9,
                        help="cosine similarity above which two images pair (default 0.9; depends on the "
                        "weights and descriptor, lower after --whiten)")
    parser.add_argument("--descriptor", choices=("cls", "cls+gem"), default="cls+gem",
                        help="[CLS], or [CLS] + GeM-pooled patch tokens (default cls+gem)")
    parser.add_argument("--imsize", type=int, default=224, help="square input size, bicubic (default 224)")
    parser.add_argument("--flip-invariant", action="store_true",
                        help="average each descriptor with its mirror image's, so left-right flips match")
    parser.add_argument("--whiten", action="store_true", help="PCA-whiten with statistics of the folder itself")
    parser.add_argument("--query", nargs="+", metavar="IMAGE", help="list these images' nearest neighbours instead")
    parser.add_argument("--top-k", type=int, default=10, help="neighbours per query image (default 10)")
    parser.add_argument("--tile", type=int, default=4096,
                        help="rows per similarity tile; memory grows with its square (default 4096)")
    parser.add_argument("--max-pairs", type=int, default=1_000_000,
                        help="stop when more pairs than this are above the threshold (default 1000000)")
    parser.add_argument("--sheet-groups", type=int, default=12, help="groups on the contact sheet (default 12)")
    parser.add_argument("--backend", choices=("auto", "torch", "faiss"), default="auto",
                        help="search with torch tiles or faiss (auto: faiss when installed)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dinossl.eval.retrieval.dedupe import DedupeSettings, run_dedupe, run_query

    settings = DedupeSettings(
        threshold=args.threshold, pooling=args.descriptor, imsize=args.imsize, flip_invariant=args.flip_invariant,
        whiten=args.whiten, tile=args.tile, max_pairs=args.max_pairs, sheet_groups=args.sheet_groups,
        top_k=args.top_k, backend=args.backend,
    )
    if args.query:
        record = run_query(backbone_run(args), args.folder, args.query, settings, args.output, args.overwrite)
        for entry in record["queries"]:
            print(entry["query"])
            for rank, hit in enumerate(entry["neighbours"], start=1):
                print(f"  {rank:3d}  {hit['similarity']:.4f}  {hit['path']}")
        return 0
    summary = run_dedupe(backbone_run(args), args.folder, settings, args.output, args.overwrite)
    index = summary["index"]
    print(f"indexed {index['readable']} images ({index['unreadable']} unreadable); {summary['pairs']} pairs above "
          f"{summary['threshold']} in {summary['groups']} groups ({summary['images_in_groups']} images)")
    return 0
