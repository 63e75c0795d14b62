"""``dino attention``: per-head attention maps and masks of an image, a folder or a video."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """WEIGHTS, --which, --device: the backbone to look through (as in ``dino eval knn``)."""
    from dinossl.cli.eval_features import WEIGHTS_HELP

    parser.add_argument("weights", metavar="WEIGHTS", help=WEIGHTS_HELP + "; a ViT")
    parser.add_argument("--which", choices=("teacher", "student"), default="teacher",
                        help="network of a training checkpoint (default: teacher)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")


def add_output_arguments(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument("--output", metavar="FOLDER", default=None, help=f"new or empty output folder ({default_help})")
    parser.add_argument("--force", "--overwrite", dest="force", action="store_true",
                        help="write into a non-empty output folder, overwriting files of the same names")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def short_side(args: argparse.Namespace) -> int | None:
    return None if args.native_size else args.short_side


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--short-side", type=int, default=480, metavar="PX",
                        help="resize so the short side has PX pixels (default 480)")
    parser.add_argument("--native-size", action="store_true", help="keep the image size (no resizing)")


def load(args: argparse.Namespace):
    """(backbone on its device, device) from the parsed backbone arguments."""
    import torch

    from dinossl.weights import load_backbone

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_backbone(args.weights, which=args.which).to(device), device


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "attention",
        help="per-head [CLS] attention maps and 60%%-mass masks of images or video frames",
        description="Heat-map and mass-mask overlays of the last block's [CLS] attention, one per head plus "
        "their mean, for an image, a folder of images, or (with --video, or a .gif/.mp4 file) a numbered "
        "frame folder rendered as an attention video.",
    )
    add_backbone_arguments(parser)
    parser.add_argument("input", metavar="INPUT", help="image file, image folder, frame folder or video file")
    add_output_arguments(parser, "default: attention-<input name>")
    add_size_arguments(parser)
    parser.add_argument("--fraction", type=float, default=0.6,
                        help="attention mass the masks keep (default 0.6)")
    parser.add_argument("--video", action="store_true", help="INPUT is a folder of numbered video frames")
    parser.add_argument("--video-name", default="attention.gif", metavar="NAME",
                        help="video file written in the output folder: .gif, or .mp4 with PyAV (default attention.gif)")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second of the video (default 10)")
    parser.add_argument("--head", type=int, default=None, help="head shown in the video (default: mean of all heads)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dinossl.eval.attention.report import run_attention
    from dinossl.eval.output_folder import usable_output_folder

    output = usable_output_folder(args.output or f"attention-{Path(args.input).stem}", args.force)
    backbone, device = load(args)
    written = run_attention(
        backbone, args.input, output, video=args.video, short_side=short_side(args), fraction=args.fraction,
        video_name=args.video_name, fps=args.fps, head=args.head, device=device, progress=not args.no_progress,
    )
    print(f"wrote {len(written)} files to {output}")
    return 0
