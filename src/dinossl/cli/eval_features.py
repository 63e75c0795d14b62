"""``dino eval knn|linear|finetune``: frozen-feature and fine-tuning evaluations."""

from __future__ import annotations

import argparse
from pathlib import Path

WEIGHTS_HELP = ("training checkpoint (checkpoint.pth), backbone file (.pth/.safetensors, released-weights layout), "
                "or a released-model name / URL (e.g. dino_vits16)")


def _common(parser: argparse.ArgumentParser, default_batch: int, features_cache: bool) -> None:
    parser.add_argument("weights", help=WEIGHTS_HELP)
    parser.add_argument("--which", choices=("teacher", "student"), default="teacher",
                        help="network of a training checkpoint (default: teacher)")
    parser.add_argument("--data", type=Path, metavar="FOLDER",
                        help="folder with train/ and val/ (or test/), each with class subfolders")
    parser.add_argument("--train", type=Path, metavar="FOLDER", help="train folder (instead of --data)")
    parser.add_argument("--val", type=Path, metavar="FOLDER", help="val folder (instead of --data)")
    parser.add_argument("--resize", type=int, default=256, help="short side after bicubic resize (default 256)")
    parser.add_argument("--crop", type=int, default=224, help="center crop (default 224; e.g. 32 for CIFAR-size images)")
    parser.add_argument("--batch-size", type=int, default=default_batch, help=f"default {default_batch}")
    parser.add_argument("--num-workers", type=int, default=4, help="data-loading processes (default 4)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    parser.add_argument("--output", type=Path, metavar="JSON",
                        help="results file (default: eval_<name>.json next to the weights)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    if features_cache:
        parser.add_argument("--features-dir", type=Path, metavar="FOLDER",
                            help="save extracted features there and reuse them on later runs")


def register(subparsers: argparse._SubParsersAction) -> None:
    knn = subparsers.add_parser("knn", help="weighted k-NN on frozen features",
                                description="Weighted k-NN (cosine, votes exp(sim/T)) of the val images against "
                                "the train images, on the frozen backbone's L2-normalised output features.")
    _common(knn, default_batch=256, features_cache=True)
    knn.add_argument("--k", type=int, nargs="+", default=[10, 20, 100, 200], help="neighbour counts (default 10 20 100 200)")
    knn.add_argument("--temperature", type=float, default=0.07, help="vote temperature T (default 0.07)")
    knn.add_argument("--query-chunk", type=int, default=1024, help="queries per similarity tile (default 1024)")
    knn.add_argument("--bank-chunk", type=int, default=65536, help="bank rows per similarity tile (default 65536)")
    knn.set_defaults(func=run_knn)

    linear = subparsers.add_parser("linear", help="linear probe on frozen features",
                                   description="Train one linear layer on frozen features (SGD, cosine lr); "
                                   "report val top-1/top-5 of the last and the best epoch.")
    _common(linear, default_batch=256, features_cache=True)
    linear.add_argument("--epochs", type=int, default=100)
    linear.add_argument("--lr", type=float, default=0.001, help="base lr, scaled by batch/256 (default 0.001)")
    linear.add_argument("--weight-decay", type=float, default=0.0)
    linear.add_argument("--n-last-blocks", type=int, default=None,
                        help="concatenate the CLS tokens of this many last blocks (default 4; 1 with --avgpool)")
    linear.add_argument("--avgpool", action="store_true", help="append the mean patch token of the last block (ViT-B setting)")
    linear.add_argument("--cached-features", action="store_true",
                        help="train on center-crop features extracted once, without augmentation (fast; labelled as such)")
    linear.add_argument("--eval-every", type=int, default=1, help="epochs between evaluations (default 1)")
    linear.add_argument("--seed", type=int, default=0)
    linear.set_defaults(func=run_linear)

    fine = subparsers.add_parser("finetune", help="fine-tune the backbone with a linear classifier (DeiT recipe)",
                                 description="Fine-tune the whole backbone plus a linear classifier: AdamW, warm-up + "
                                 "cosine, label smoothing, Mixup/CutMix, RandAugment, stochastic depth, optional "
                                 "layer-wise lr decay.")
    _common(fine, default_batch=256, features_cache=False)
    fine.add_argument("--epochs", type=int, default=100)
    fine.add_argument("--lr", type=float, default=5e-4, help="base lr, scaled by batch/512 (default 5e-4)")
    fine.add_argument("--min-lr", type=float, default=1e-6)
    fine.add_argument("--weight-decay", type=float, default=0.05)
    fine.add_argument("--warmup-epochs", type=int, default=5)
    fine.add_argument("--label-smoothing", type=float, default=0.1)
    fine.add_argument("--layer-decay", type=float, default=1.0, help="layer-wise lr decay, ViT only (1 = off; e.g. 0.65)")
    fine.add_argument("--drop-path", type=float, default=0.1)
    fine.add_argument("--randaugment", action=argparse.BooleanOptionalAction, default=True, help="RandAugment(2, 9)")
    fine.add_argument("--random-erasing", type=float, default=0.25, help="probability (0 = off)")
    fine.add_argument("--mixup", type=float, default=0.8, help="Mixup alpha (0 = off)")
    fine.add_argument("--cutmix", type=float, default=1.0, help="CutMix alpha (0 = off)")
    fine.add_argument("--clip-grad", type=float, default=0.0, help="max gradient norm (0 = off)")
    fine.add_argument("--eval-every", type=int, default=1)
    fine.add_argument("--seed", type=int, default=0)
    fine.set_defaults(func=run_finetune)


def _target(args: argparse.Namespace):
    from dinossl.eval.classification.protocols import EvalTarget

    return EvalTarget(weights=args.weights, which=args.which, data=args.data, train=args.train, val=args.val,
                      device=args.device, output=args.output, overwrite=args.overwrite,
                      features_dir=getattr(args, "features_dir", None))


def _images(args: argparse.Namespace):
    from dinossl.eval.classification.protocols import ImageSettings

    return ImageSettings(resize=args.resize, crop=args.crop, batch_size=args.batch_size, num_workers=args.num_workers)


def _report(record) -> int:
    from dinossl.eval.results import summary_table

    if record is not None:
        print(summary_table(record))
    return 0


def run_knn(args: argparse.Namespace) -> int:
    from dinossl.eval.classification.knn import KnnSettings
    from dinossl.eval.classification.protocols import run_knn as run

    settings = KnnSettings(ks=tuple(args.k), temperature=args.temperature, query_chunk=args.query_chunk,
                           bank_chunk=args.bank_chunk)
    return _report(run(_target(args), _images(args), settings))


def run_linear(args: argparse.Namespace) -> int:
    from dinossl.eval.classification.linear import LinearSettings
    from dinossl.eval.classification.protocols import run_linear as run

    settings = LinearSettings(epochs=args.epochs, base_lr=args.lr, batch_size=args.batch_size,
                              weight_decay=args.weight_decay, eval_every=args.eval_every,
                              cached=args.cached_features, seed=args.seed)
    return _report(run(_target(args), _images(args), settings, n_last_blocks=args.n_last_blocks, avgpool=args.avgpool))


def run_finetune(args: argparse.Namespace) -> int:
    from dinossl.eval.classification.finetune import FinetuneSettings
    from dinossl.eval.classification.protocols import run_finetune as run

    settings = FinetuneSettings(
        epochs=args.epochs, base_lr=args.lr, min_lr=args.min_lr, batch_size=args.batch_size,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        layer_decay=args.layer_decay, drop_path=args.drop_path, randaugment=args.randaugment,
        random_erasing=args.random_erasing, mixup=args.mixup, cutmix=args.cutmix, clip_grad=args.clip_grad,
        eval_every=args.eval_every, seed=args.seed,
    )
    return _report(run(_target(args), _images(args), settings))
