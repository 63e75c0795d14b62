"""``dino embed``: the features of every image of a folder or list, written to a feature folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinossl.cli.common import HelpFormatter, add_settings, backbone_harness, option, read_settings
from dinossl.cli.eval_retrieval import add_run_arguments
from dinossl.eval.embedding import POOLS, EmbedSettings, run_embed
from dinossl.outputs import default_output_folder

SECTIONS = {"embed": EmbedSettings}
OPTIONS = [
    option("--pool", "embed.pool", "global descriptor: [CLS], GeM or mean of the patch tokens, or [CLS] + mean",
           choices=POOLS),
    option("--no-normalize", "embed.normalize", "store the descriptors unnormalised (L2-normalised without it)",
           action="store_false"),
    option("--patch-tokens", "embed.patch_tokens", "also store the last block's patch tokens: full (each image's "
           "grid) or G (average-pooled to G x G)", metavar="full|G"),
    option("--multiscale", "embed.multiscale", "average the descriptor over scales 1, 1/sqrt(2), 1/2 (the paper's "
           "retrieval recipe)", action="store_true"),
    option("--resize", "embed.resize", "bicubic resize of the short side before the center crop", type=int),
    option("--crop", "embed.crop", "center crop (with --keep-aspect: the short side)", type=int),
    option("--keep-aspect", "embed.keep_aspect", "no center crop: short side to --crop, aspect ratio kept, trimmed "
           "to the patch grid", action="store_true"),
    option("--square", "embed.square", "resize to --crop x --crop, no crop (the geometry of dino dedupe and copy "
           "detection)", action="store_true"),
    option("--dtype", "embed.dtype", "stored precision (float16 halves the size)", choices=("float32", "float16")),
    option("--format", "embed.format", "shard files", choices=("safetensors", "npy")),
    option("--images-per-shard", "embed.images_per_shard", "input images per shard (the unit of resuming)", type=int),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed", formatter_class=HelpFormatter,
        help="write the features of every image of a folder or list (shards + index + manifest)",
        description="Computes a global descriptor (and optionally patch tokens) of every image under --data "
        "(recursively) or listed in a text file, and writes them as shards (safetensors or npy), index.csv, "
        "descriptors.npy and manifest.json. Resumes an interrupted run in the same folder; under torchrun each "
        "process writes its own shards. Unreadable images are skipped and listed in the manifest.",
    )
    add_run_arguments(parser, 64, "embed-<data>-<weights>")
    parser.add_argument("--data", required=True, type=Path, metavar="FOLDER_OR_LIST",
                        help="image folder (searched recursively) or a text file with one image path per line")
    add_settings(parser, SECTIONS, OPTIONS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings: EmbedSettings = read_settings(args, SECTIONS, OPTIONS)["embed"]
    output = args.output or default_output_folder("embed", args.weights, args.data, args.which)
    manifest = run_embed(backbone_harness(args), args.data, output, settings, args.overwrite)
    if manifest is not None:
        print(f"embedded {manifest['count']} images ({manifest['dimension']} values each) into {output}; "
              f"{manifest['skipped_count']} unreadable skipped (listed in manifest.json)")
    return 0
