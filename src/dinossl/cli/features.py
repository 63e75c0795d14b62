"""``dino features``: patch-feature pictures (principal components as colours) of images or video frames."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinossl.cli import common
from dinossl.cli.common import HelpFormatter, add_picture_input, add_settings, option, read_settings
from dinossl.eval.attention.feature_pca import PcaSettings, run_feature_pictures
from dinossl.eval.attention.report import check_attention_input

SECTIONS = {"pca": PcaSettings}
OPTIONS = [
    common.short_side_option("pca"),
    option("--threshold", "pca.threshold", "foreground: first component above this many standard deviations",
           type=float),
    *common.video_options("pca"),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features", formatter_class=HelpFormatter,
        help="patch-feature pictures: the first three principal components of the patch tokens as RGB",
        description="Fits one PCA over the last block's patch tokens of every picture of INPUT (an image, a folder, "
        "or with --video / a .gif or .mp4 file the frames of a video), removes the background by thresholding the "
        "first component and draws the foreground's first three components as red, green and blue, at each "
        "picture's own aspect ratio: <name>.png, <name>-foreground.png, pca.json (and the video).",
    )
    add_picture_input(parser, "features-<input>-<weights>")
    add_settings(parser, SECTIONS, OPTIONS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings: PcaSettings = read_settings(args, SECTIONS, OPTIONS)["pca"]
    source = check_attention_input(args.input, args.video)
    output = common.output_folder(args, "features", source)
    loaded = common.backbone_harness(args).load()
    written = run_feature_pictures(loaded, source, output, settings, video=args.video, progress=not args.no_progress)
    print(f"wrote {len(written)} files to {Path(output)}")
    return 0
