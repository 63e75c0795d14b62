"""``dino features``: patch-feature pictures (principal components as colours) of images or video frames."""

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
from dinossl.eval.attention.feature_pca import PcaSettings, run_feature_pictures
from dinossl.eval.attention.report import check_attention_input
from dinossl.outputs import default_output_folder, usable_output_folder

SECTIONS = {"pca": PcaSettings}
OPTIONS = [
    option("--short-side", "pca.short_side", "resize so the short side has PX pixels (aspect ratio kept)", type=int,
           metavar="PX"),
    option("--threshold", "pca.threshold", "foreground: first component above this many standard deviations",
           type=float),
    option("--video-name", "pca.video_name", "video file written in the output folder: .gif, or .mp4 with PyAV",
           metavar="NAME"),
    option("--fps", "pca.fps", "frames per second of the video", type=float),
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
    add_weights(parser, "; a ViT")
    parser.add_argument("input", metavar="INPUT", help="image file, image folder, frame folder or video file")
    add_device(parser)
    add_output(parser, "features-<input>-<weights>")
    parser.add_argument("--video", action="store_true", help="INPUT is a folder of numbered video frames")
    add_settings(parser, SECTIONS, OPTIONS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings: PcaSettings = read_settings(args, SECTIONS, OPTIONS)["pca"]
    source = check_attention_input(args.input, args.video)
    output = usable_output_folder(args.output or default_output_folder("features", args.weights, source, args.which),
                                  args.overwrite)
    loaded = backbone_harness(args).load()
    written = run_feature_pictures(loaded, source, output, settings, video=args.video, progress=not args.no_progress)
    print(f"wrote {len(written)} files to {Path(output)}")
    return 0
