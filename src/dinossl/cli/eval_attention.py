"""``dino eval masks|video``: attention masks against foreground masks, and DAVIS-style video
object segmentation by label propagation."""

from __future__ import annotations

import argparse

from dinossl.cli.attention import add_backbone_arguments, add_output_arguments, add_size_arguments, load, short_side


def register(subparsers: argparse._SubParsersAction) -> None:
    masks = subparsers.add_parser(
        "masks",
        help="Jaccard index of each head's 60%%-mass attention mask against foreground masks (paper Fig. 4)",
        description="For each image, the Jaccard index between every head's mass mask and the ground-truth "
        "foreground; per image, best head and mean over heads, averaged over the set. Writes results.json "
        "and jaccard.png.",
    )
    add_backbone_arguments(masks)
    masks.add_argument("--images", required=True, metavar="FOLDER", help="folder of images")
    masks.add_argument("--masks", required=True, metavar="FOLDER",
                       help="folder of foreground masks, matched to images by file name stem")
    add_output_arguments(masks, "default: eval-masks")
    add_size_arguments(masks)
    masks.add_argument("--fraction", type=float, default=0.6, help="attention mass the masks keep (default 0.6)")
    masks.add_argument("--mask-threshold", type=int, default=127,
                       help="ground-truth pixels above this gray level are foreground (default 127)")
    masks.add_argument("--examples", type=int, default=4, help="example images in the figure (default 4)")
    masks.set_defaults(func=run_masks)

    video = subparsers.add_parser(
        "video",
        help="semi-supervised video object segmentation by label propagation, scored with J and F (paper Table 5)",
        description="Propagates each sequence's first-frame annotation with last-layer patch features, writes "
        "palette PNGs in the DAVIS layout (<output>/<sequence>/NNNNN.png) and scores them: J, F and J&F per "
        "object, per sequence and overall (results.json).",
    )
    add_backbone_arguments(video)
    video.add_argument("--davis", required=True, metavar="ROOT",
                       help="DAVIS folder with JPEGImages/<resolution>/<seq> and Annotations/<resolution>/<seq>")
    video.add_argument("--sequences", nargs="+", metavar="SEQ", help="sequences to run (default: all)")
    video.add_argument("--resolution", default="480p", help="DAVIS resolution folder (default 480p)")
    add_output_arguments(video, "default: eval-video")
    video.add_argument("--short-side", type=int, default=480, metavar="PX", help="frame short side (default 480)")
    video.add_argument("--radius", type=int, default=12,
                       help="neighbourhood half-size in patches; -1: none (default 12)")
    video.add_argument("--topk", type=int, default=5, help="source patches per target patch (default 5)")
    video.add_argument("--context", type=int, default=7, help="previous frames used besides the first (default 7)")
    video.add_argument("--temperature", type=float, default=0.1, help="affinity exp(cos/T) (default 0.1)")
    video.add_argument("--max-frames", type=int, default=None,
                       help="only each sequence's first N frames (quick checks)")
    video.set_defaults(func=run_video)


def run_masks(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dinossl.eval.attention.masks import evaluate_masks, pair_images_with_masks
    from dinossl.eval.attention.masks_figure import write_mask_report
    from dinossl.eval.output_folder import usable_output_folder

    pairs = pair_images_with_masks(args.images, args.masks)
    output = usable_output_folder(args.output or "eval-masks", args.force)
    backbone, device = load(args)
    report, examples = evaluate_masks(
        backbone, pairs, short_side=short_side(args), fraction=args.fraction, threshold=args.mask_threshold,
        device=device, progress=not args.no_progress, keep=args.examples,
    )
    report["settings"]["weights"] = str(Path(args.weights))
    write_mask_report(report, examples, output, title=Path(args.weights).name)
    summary = report["summary"]
    print(f"Jaccard over {summary['images']} images: best head {summary['best_head_jaccard']:.3f}, "
          f"mean over heads {summary['mean_head_jaccard']:.3f}, mean map {summary['mean_map_jaccard']:.3f}")
    print(f"results: {output}")
    return 0


def run_video(args: argparse.Namespace) -> int:
    from dinossl.eval.output_folder import usable_output_folder
    from dinossl.eval.video.segmentation import PropagationSettings, evaluate_davis

    settings = PropagationSettings(short_side=args.short_side, radius=None if args.radius < 0 else args.radius,
                                   topk=args.topk, context=args.context, temperature=args.temperature)
    output = usable_output_folder(args.output or "eval-video", args.force)
    backbone, device = load(args)
    report = evaluate_davis(backbone, args.davis, output, args.sequences, args.resolution, settings, device,
                            progress=not args.no_progress, max_frames=args.max_frames)
    for name, scores in report["sequences"].items():
        print(f"{name:24s} J {scores['J']:.3f}  F {scores['F']:.3f}  J&F {scores['J&F']:.3f}")
    overall = report["overall"]
    print(f"{'overall':24s} J {overall['J']:.3f}  F {overall['F']:.3f}  J&F {overall['J&F']:.3f}")
    print(f"results: {output}")
    return 0
