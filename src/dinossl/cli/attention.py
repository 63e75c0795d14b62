"""``dino attention``: per-head attention maps and masks of an image, a folder or a video."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinossl.cli import common
from dinossl.cli.common import HelpFormatter, add_picture_input, add_settings, option, read_settings
from dinossl.eval.attention.report import AttentionSettings, check_attention_input, run_attention

SECTIONS = {"attention": AttentionSettings}
OPTIONS = [
    common.short_side_option("attention"), common.fraction_option("attention"), *common.video_options("attention"),
    option("--head", "attention.head", "head shown in the video (none: the mean of all heads)", type=int),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "attention", formatter_class=HelpFormatter,
        help="per-head [CLS] attention maps and 60%%-mass masks of images or video frames",
        description="Heat-map and mass-mask overlays of the last block's [CLS] attention, one per head plus "
        "their mean, for an image, a folder of images, or (with --video, or a .gif/.mp4 file) a numbered "
        "frame folder rendered as an attention video.",
    )
    add_picture_input(parser, "attention-<input>-<weights>")
    parser.add_argument("--native-size", action="store_true", help="keep the image size (no resizing)")
    add_settings(parser, SECTIONS, OPTIONS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.native_size:
        args.overrides = [*getattr(args, "overrides", []), "attention.short_side=null"]
    settings: AttentionSettings = read_settings(args, SECTIONS, OPTIONS)["attention"]
    source = check_attention_input(args.input, args.video)
    output = common.output_folder(args, "attention", source)
    loaded = common.backbone_harness(args).load()
    backbone, device = loaded.module, loaded.device
    written = run_attention(
        backbone, source, output, video=args.video, short_side=settings.short_side, fraction=settings.fraction,
        video_name=settings.video_name, fps=settings.fps, head=settings.head, device=device,
        progress=not args.no_progress,
    )
    print(f"wrote {len(written)} files to {Path(output)}")
    return 0
