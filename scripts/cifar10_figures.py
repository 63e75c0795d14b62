"""README figures: k-NN (k=20) and linear top-1 on the CIFAR-10 test set (bank / training on
the train set) for a checkpoint, for the same architecture at random initialisation, and for
raw pixels. Writes one JSON file and prints a table.

    python scripts/cifar10_figures.py --checkpoint runs/cifar/checkpoint.pth \\
        --archive ../shared/data/cifar10-jpg.tar.gz --workdir /tmp/cifar10 --output cifar10_figures.json

``--data`` takes an already extracted folder holding train/ and test/ class folders instead;
``--per-class N`` keeps the first N train images per class (N/5 test images) for a quick check
(links under ``--workdir``).
The linear probe trains on cached center-crop features by default (``--linear-mode cached``,
no augmentation: hours faster on a CPU); ``--linear-mode augmented`` runs the full protocol.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from dinossl.errors import DinoError
from dinossl.eval.baselines import RawPixels, random_init_like
from dinossl.eval.feature_cache import FeatureCache, file_identity
from dinossl.eval.classification.labelled_splits import open_splits
from dinossl.eval.backbones import describe_backbone
from dinossl.eval.classification.knn import KnnSettings
from dinossl.eval.classification.linear import LinearSettings
from dinossl.eval.classification.protocols import (
    LINEAR_AUGMENTED, LINEAR_CACHED, ImageSettings, default_spec, knn_protocol, linear_protocol,
)
from dinossl.eval.results import format_table, write_results
from dinossl.outputs import usable_output_file
from dinossl.runtime.distributed import init_distributed
from dinossl.weights import load_backbone

log = logging.getLogger("dinossl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint or backbone file")
    parser.add_argument("--which", choices=("teacher", "student"), default="teacher")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="extracted CIFAR-10 folder with train/ and test/")
    source.add_argument("--archive", type=Path, help="cifar10-jpg.tar.gz (extracted into --workdir)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "dinossl-cifar10",
                        help="where --archive is extracted and --per-class subsets are linked (kept for later runs)")
    parser.add_argument("--per-class", type=int, default=None, help="subset: N train and N/5 test images per class")
    parser.add_argument("--size", type=int, default=32, help="resize and center crop (default 32: native CIFAR size)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--linear-mode", choices=("cached", "augmented"), default="cached")
    parser.add_argument("--linear-epochs", type=int, default=100)
    parser.add_argument("--linear-lr", type=float, default=0.001, help="base lr (scaled by batch/256)")
    parser.add_argument("--n-last-blocks", type=int, default=None, help="ViT linear features (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random-initialisation and linear seed")
    parser.add_argument("--features-dir", type=Path, help="cache of extracted features")
    parser.add_argument("--skip", nargs="*", default=[], choices=("checkpoint", "random_init", "raw_pixels"))
    parser.add_argument("--output", type=Path, required=True, help="results JSON")
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def cifar_root(args: argparse.Namespace) -> Path:
    """Folder with train/ and test/: --data, or --archive extracted once into --workdir."""
    if args.data is not None:
        return args.data
    root = args.workdir / "cifar10"
    marker = args.workdir / ".extracted"
    if not marker.exists():
        log.info("extracting %s into %s", args.archive, args.workdir)
        args.workdir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(args.archive) as tar:
            tar.extractall(args.workdir, filter="data")
        marker.touch()
    return root


def subset(root: Path, per_class: int, dest: Path) -> Path:
    """dest/train and dest/test with links to the first per_class (per_class // 5) images per
    class of root; made once and kept, so cached features stay valid."""
    if (dest / ".complete").exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    for split, count in (("train", per_class), ("test", max(1, per_class // 5))):
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            (dest / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:count]:
                (dest / split / class_dir.name / image.name).symlink_to(image.resolve())
    (dest / ".complete").touch()
    return dest


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def evaluate_all(args: argparse.Namespace, root: Path, source: Path) -> dict:
    splits = open_splits(train=root / "train", val=root / "test")
    ctx = init_distributed(args.device)
    trained = load_backbone(args.checkpoint, which=args.which)
    weights_id = {**file_identity(args.checkpoint), "which": args.which}
    candidates = {
        "checkpoint": (trained, weights_id),
        "random_init": (random_init_like(trained, args.seed), {"random_init_like": weights_id, "seed": args.seed}),
        "raw_pixels": (RawPixels(), {"raw_pixels": True}),
    }
    images = ImageSettings(resize=args.size, crop=args.size, batch_size=args.batch_size, num_workers=args.num_workers)
    linear_settings = LinearSettings(epochs=args.linear_epochs, base_lr=args.linear_lr, batch_size=args.batch_size,
                                     eval_every=max(1, args.linear_epochs // 10), cached=args.linear_mode == "cached",
                                     seed=args.seed)
    figures = {}
    for name, (backbone, identity) in candidates.items():
        if name in args.skip:
            continue
        backbone.to(ctx.device).eval()
        cache = FeatureCache(args.features_dir, identity) if args.features_dir else None
        start = time.perf_counter()
        knn = knn_protocol(backbone, splits, images, KnnSettings(), ctx, cache)
        spec = default_spec(backbone, args.n_last_blocks if name != "raw_pixels" else None)
        linear = linear_protocol(backbone, splits, images, linear_settings, spec, ctx, cache)
        figures[name] = {
            "backbone": describe_backbone(backbone), "linear_features": {"n_last_blocks": spec.n_last_blocks,
                                                                         "avgpool": spec.avgpool},
            "knn": knn["knn"], "knn_top1_k20": knn["knn"]["20"]["top1"],
            "linear": {k: linear[k] for k in ("last", "best", "feature_dim", "history")},
            "linear_top1_last": linear["last"]["top1"], "wall_s": round(time.perf_counter() - start, 1),
        }
        log.info("%s: k-NN k=20 %.2f%%, linear %.2f%%", name, figures[name]["knn_top1_k20"], linear["last"]["top1"])
    return {
        "evaluation": "cifar10_figures", "weights": {"path": str(args.checkpoint.resolve()), "which": args.which},
        "data": {**splits.describe(), "source": str(source.resolve())}, "subset_per_class": args.per_class, "image_size": args.size,
        "knn_protocol": "weighted k-NN, T=0.07, cosine on L2-normalised backbone output",
        "linear_protocol": LINEAR_CACHED if linear_settings.cached else LINEAR_AUGMENTED,
        "linear_settings": {"epochs": linear_settings.epochs, "base_lr": linear_settings.base_lr,
                            "lr": linear_settings.lr, "batch_size": linear_settings.batch_size},
        "machine": machine(), "device": str(ctx.device), "figures": figures,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:], log.propagate = [handler], False
    log.setLevel(logging.INFO)
    try:
        usable_output_file(args.output, args.overwrite)
        source = root = cifar_root(args)
        if args.per_class is not None:
            root = subset(source, args.per_class, args.workdir / f"subset-{args.per_class}")
        record = evaluate_all(args, root, source)
        write_results(args.output, record, overwrite=args.overwrite)
    except DinoError as exc:
        print(f"cifar10_figures: error: {exc}", file=sys.stderr)
        return 2
    rows = [(name, f["knn_top1_k20"], f["linear_top1_last"]) for name, f in record["figures"].items()]
    print(format_table(("features", "k-NN k=20 top-1 %", "linear top-1 %"), rows))
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
