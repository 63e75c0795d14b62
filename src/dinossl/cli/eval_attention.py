"""``dino eval masks|video``: attention masks against foreground masks, and DAVIS-style video
object segmentation by label propagation."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinossl.cli import common
from dinossl.cli.common import HelpFormatter, add_device, add_output, add_settings, add_weights, option, read_settings
from dinossl.eval.attention.masks import MaskSettings, evaluate_masks, pair_images_with_masks
from dinossl.eval.attention.masks_figure import write_mask_report
from dinossl.eval.video.davis import DavisLayout
from dinossl.eval.validation import PROTOCOLS
from dinossl.eval.video.segmentation import PropagationSettings, evaluate_davis

MASKS = {"masks": MaskSettings}
MASK_OPTIONS = [
    common.short_side_option("masks"), common.fraction_option("masks"),
    option("--mask-threshold", "masks.mask_threshold", "ground-truth pixels above this gray level are foreground",
           type=int),
    option("--examples", "masks.examples", "example images in the figure", type=int),
]
VIDEO = {"propagation": PropagationSettings}
VIDEO_OPTIONS = [
    option("--short-side", "propagation.short_side", "frame short side", type=int, metavar="PX"),
    option("--radius", "propagation.radius", "neighbourhood half-size in patches (null: none)", type=int),
    option("--topk", "propagation.topk", "source patches per target patch", type=int),
    option("--context", "propagation.context", "previous frames used besides the first", type=int),
    option("--temperature", "propagation.temperature", "affinity exp(cos / T)", type=float),
    option("--protocol", "propagation.protocol", "frames and labels in and out: dinossl, or reference for the "
           "reference script's (long side floored to 64 px, OpenCV bilinear, std 0.228 for red, nearest-neighbour "
           "first labels; the paper's Table 5)", choices=PROTOCOLS),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    masks = subparsers.add_parser(
        "masks", formatter_class=HelpFormatter,
        help="Jaccard index of each head's 60%%-mass attention mask against foreground masks (paper Fig. 4)",
        description="For each image, the Jaccard index between every head's mass mask and the ground-truth "
        "foreground; per image, best head and mean over heads, averaged over the set. Writes results.json "
        "and jaccard.png.",
    )
    add_weights(masks, "; a ViT")
    masks.add_argument("--images", required=True, type=Path, metavar="FOLDER", help="folder of images")
    masks.add_argument("--masks", required=True, type=Path, metavar="FOLDER",
                       help="folder of foreground masks, matched to images by file name stem")
    add_device(masks)
    add_output(masks, "eval-masks-<images>-<weights>")
    masks.add_argument("--native-size", action="store_true", help="keep the image size (no resizing)")
    add_settings(masks, MASKS, MASK_OPTIONS)
    masks.set_defaults(func=run_masks)

    video = subparsers.add_parser(
        "video", formatter_class=HelpFormatter,
        help="semi-supervised video object segmentation by label propagation, scored with J and F (paper Table 5)",
        description="Propagates each sequence's first-frame annotation with last-layer patch features, writes "
        "palette PNGs in the DAVIS layout (<output>/<sequence>/NNNNN.png) and scores them: J, F and J&F per "
        "object, per sequence and overall (results.json).",
    )
    add_weights(video, "; a ViT")
    video.add_argument("--davis", required=True, type=Path, metavar="ROOT",
                       help="DAVIS folder with JPEGImages/<resolution>/<seq> and Annotations/<resolution>/<seq>")
    video.add_argument("--sequences", nargs="+", metavar="SEQ", help="sequences to run (default: all)")
    video.add_argument("--resolution", default="480p", help="DAVIS resolution folder")
    video.add_argument("--max-frames", type=int, default=None, help="only each sequence's first N frames "
                       "(quick checks; default: all)")
    add_device(video)
    add_output(video, "eval-video-<davis>-<weights>")
    add_settings(video, VIDEO, VIDEO_OPTIONS)
    video.set_defaults(func=run_video)


def run_masks(args: argparse.Namespace) -> int:
    if args.native_size:
        args.overrides = [*getattr(args, "overrides", []), "masks.short_side=null"]
    settings: MaskSettings = read_settings(args, MASKS, MASK_OPTIONS)["masks"]
    pairs = pair_images_with_masks(args.images, args.masks)
    output = common.output_folder(args, "eval-masks", args.images)
    harness = common.backbone_harness(args)
    loaded = harness.load()
    backbone, device = loaded.module, loaded.device
    report, examples = evaluate_masks(
        backbone, pairs, short_side=settings.short_side, fraction=settings.fraction,
        threshold=settings.mask_threshold, device=device, progress=not args.no_progress, keep=settings.examples,
    )
    report["settings"]["weights"] = str(Path(args.weights))
    report["weights"] = harness.describe(loaded)
    write_mask_report(report, examples, output, title=Path(args.weights).name)
    summary = report["summary"]
    print(f"Jaccard over {summary['images']} images: best head {summary['best_head_jaccard']:.3f}, "
          f"mean over heads {summary['mean_head_jaccard']:.3f}, mean map {summary['mean_map_jaccard']:.3f}")
    print(f"results: {output}")
    return 0


def run_video(args: argparse.Namespace) -> int:
    settings: PropagationSettings = read_settings(args, VIDEO, VIDEO_OPTIONS)["propagation"]
    DavisLayout(args.davis, args.resolution).sequences(args.sequences)  # checked before any weights are loaded
    output = common.output_folder(args, "eval-video", args.davis)
    harness = common.backbone_harness(args)
    loaded = harness.load()
    report = evaluate_davis(loaded.module, args.davis, output, args.sequences, args.resolution, settings,
                            loaded.device, progress=not args.no_progress, max_frames=args.max_frames,
                            weights=harness.describe(loaded))
    for name, scores in report["sequences"].items():
        print(f"{name:24s} J {scores['J']:.3f}  F {scores['F']:.3f}  J&F {scores['J&F']:.3f}")
    overall = report["overall"]
    print(f"{'overall':24s} J {overall['J']:.3f}  F {overall['F']:.3f}  J&F {overall['J&F']:.3f}")
    print(f"results: {output}")
    return 0
