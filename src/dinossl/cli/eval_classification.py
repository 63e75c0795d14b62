"""``dino eval knn|linear|finetune``: frozen-feature and fine-tuning classification."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinossl.cli.common import (
    HelpFormatter,
    add_device,
    add_output,
    add_settings,
    add_weights,
    option,
    read_settings,
)
from dinossl.eval.classification.finetune import FinetuneSettings
from dinossl.eval.classification.embedded_knn import run_knn_embedded
from dinossl.eval.classification.knn import KnnSettings
from dinossl.eval.classification.linear import LinearSettings
from dinossl.eval.classification.protocols import (
    EvalTarget,
    ImageSettings,
    evaluate_linear_head,
    run_finetune,
    run_knn,
    run_linear,
)
from dinossl.eval.results import summary_table

IMAGE_OPTIONS = [
    option("--resize", "images.resize", "short side after the bicubic resize", type=int),
    option("--crop", "images.crop", "center crop (e.g. 32 for CIFAR-size images)", type=int),
    option("--num-workers", "images.num_workers", "data-loading processes", type=int),
]
KNN = {"images": ImageSettings, "knn": KnnSettings}
KNN_OPTIONS = IMAGE_OPTIONS + [
    option("--batch-size", "images.batch_size", "images per forward pass, per process", type=int),
    option("--k", "knn.ks", "neighbour counts", type=int, nargs="+"),
    option("--temperature", "knn.temperature", "vote temperature T: votes exp(sim / T)", type=float),
    option("--query-chunk", "knn.query_chunk", "queries per similarity tile", type=int),
    option("--bank-chunk", "knn.bank_chunk", "bank rows per similarity tile", type=int),
]
LINEAR = {"images": ImageSettings, "linear": LinearSettings}
LINEAR_OPTIONS = IMAGE_OPTIONS + [
    option("--batch-size", ("linear.batch_size", "images.batch_size"), "global training batch (also the extraction "
           "batch per process)", type=int),
    option("--epochs", "linear.epochs", "training epochs", type=int),
    option("--lr", "linear.base_lr", "base lr, scaled by batch / 256", type=float),
    option("--weight-decay", "linear.weight_decay", "weight decay", type=float),
    option("--n-last-blocks", "linear.n_last_blocks", "concatenate the CLS tokens of this many last blocks "
           "(none: 4, or 1 with --avgpool)", type=int),
    option("--avgpool", "linear.avgpool", "append the mean patch token of the last block (the ViT-B setting)",
           action="store_true"),
    option("--cached-features", "linear.cached", "train on center-crop features extracted once, without "
           "augmentation (fast; labelled as such)", action="store_true"),
    option("--eval-every", "linear.eval_every", "epochs between evaluations", type=int),
    option("--seed", "linear.seed", "random seed", type=int),
]
FINETUNE = {"images": ImageSettings, "finetune": FinetuneSettings}
FINETUNE_OPTIONS = IMAGE_OPTIONS + [
    option("--batch-size", ("finetune.batch_size", "images.batch_size"), "global training batch (also the "
           "evaluation batch per process)", type=int),
    option("--epochs", "finetune.epochs", "training epochs", type=int),
    option("--lr", "finetune.base_lr", "base lr, scaled by batch / 512", type=float),
    option("--min-lr", "finetune.min_lr", "final lr of the cosine", type=float),
    option("--weight-decay", "finetune.weight_decay", "weight decay", type=float),
    option("--warmup-epochs", "finetune.warmup_epochs", "linear warm-up epochs", type=int),
    option("--label-smoothing", "finetune.label_smoothing", "label smoothing", type=float),
    option("--layer-decay", "finetune.layer_decay", "layer-wise lr decay, ViT only (1 = off; e.g. 0.65)", type=float),
    option("--drop-path", "finetune.drop_path", "stochastic depth rate", type=float),
    option("--randaugment", "finetune.randaugment", "timm RandAugment (the --auto-augment policy); off: colour "
           "jitter", action=argparse.BooleanOptionalAction),
    option("--auto-augment", "finetune.auto_augment", "timm RandAugment policy", metavar="POLICY"),
    option("--random-erasing", "finetune.random_erasing", "random erasing probability (0 = off)", type=float),
    option("--mixup", "finetune.mixup", "Mixup alpha (0 = off)", type=float),
    option("--cutmix", "finetune.cutmix", "CutMix alpha (0 = off)", type=float),
    option("--model-ema", "finetune.model_ema", "keep and evaluate an EMA of the model (timm ModelEmaV3)",
           action=argparse.BooleanOptionalAction),
    option("--model-ema-decay", "finetune.model_ema_decay", "EMA decay per step", type=float),
    option("--clip-grad", "finetune.clip_grad", "max gradient norm (0 = off)", type=float),
    option("--eval-every", "finetune.eval_every", "epochs between evaluations", type=int),
    option("--seed", "finetune.seed", "random seed", type=int),
]


def _inputs(parser: argparse.ArgumentParser, evaluation: str, features_cache: bool) -> None:
    add_weights(parser)
    parser.add_argument("--data", type=Path, metavar="FOLDER",
                        help="folder with train/ and val/ (or test/), each with one subfolder per class")
    parser.add_argument("--train", type=Path, metavar="FOLDER", help="train folder (instead of --data)")
    parser.add_argument("--val", type=Path, metavar="FOLDER", help="val folder (instead of --data)")
    add_device(parser)
    add_output(parser, f"eval-{evaluation}-<data>-<weights>")
    if features_cache:
        parser.add_argument("--features-dir", type=Path, metavar="FOLDER",
                            help="save extracted features there and reuse them on later runs")


def _parser(subparsers: argparse._SubParsersAction, name: str, help: str, description: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help, description=description, formatter_class=HelpFormatter)


def register(subparsers: argparse._SubParsersAction) -> None:
    knn = _parser(subparsers, "knn", "weighted k-NN on frozen features",
                  "Weighted k-NN (cosine, votes exp(sim/T)) of the val images against the train images, on the "
                  "frozen backbone's L2-normalised output features. Writes results.json in the output folder.")
    _inputs(knn, "knn", features_cache=True)
    knn.add_argument("--embedded", nargs=2, type=Path, metavar=("TRAIN", "VAL"),
                     help="read the features from these dino embed folders (of the train and val class folders) "
                     "instead of computing them")
    add_settings(knn, KNN, KNN_OPTIONS)
    knn.set_defaults(func=run_knn_command)

    linear = _parser(subparsers, "linear", "linear probe on frozen features",
                     "Train one linear layer on frozen features (SGD, cosine lr); report val top-1/top-5 of the "
                     "last and the best epoch. Writes results.json and the best head (linear_head.safetensors + "
                     ".json) in the output folder; a killed probe resumes when run again on the same folder. "
                     "With --evaluate HEAD, scores a saved head on the val images without training.")
    _inputs(linear, "linear", features_cache=True)
    linear.add_argument("--evaluate", metavar="HEAD", default=None,
                        help="score this saved head without training: a dino eval linear folder or "
                        "linear_head.safetensors, or the reference's *_linearweights.pth (path or URL; give its "
                        "--n-last-blocks/--avgpool)")
    add_settings(linear, LINEAR, LINEAR_OPTIONS)
    linear.set_defaults(func=run_linear_command)

    fine = _parser(subparsers, "finetune", "fine-tune the backbone with a linear classifier (DeiT recipe)",
                   "Fine-tune the whole backbone plus a linear classifier: AdamW, warm-up + cosine, label smoothing, "
                   "Mixup/CutMix, RandAugment, random erasing, stochastic depth, model EMA, optional layer-wise lr "
                   "decay (timm's pieces). Writes results.json and the best network (finetuned.safetensors + .json) "
                   "in the output folder; a killed run resumes when run again on the same folder.")
    _inputs(fine, "finetune", features_cache=False)
    add_settings(fine, FINETUNE, FINETUNE_OPTIONS)
    fine.set_defaults(func=run_finetune_command)


def _target(args: argparse.Namespace) -> EvalTarget:
    return EvalTarget(weights=args.weights, which=args.which, data=args.data, train=args.train, val=args.val,
                      device=args.device, output=args.output, overwrite=args.overwrite,
                      features_dir=getattr(args, "features_dir", None), tf32=args.tf32)


def _report(record) -> int:
    if record is not None:
        print(summary_table(record))
    return 0


def run_knn_command(args: argparse.Namespace) -> int:
    settings = read_settings(args, KNN, KNN_OPTIONS)
    if args.embedded:
        return _report(run_knn_embedded(_target(args), *args.embedded, settings["images"], settings["knn"]))
    return _report(run_knn(_target(args), settings["images"], settings["knn"]))


def run_linear_command(args: argparse.Namespace) -> int:
    settings = read_settings(args, LINEAR, LINEAR_OPTIONS)
    if args.evaluate is not None:
        return _report(evaluate_linear_head(_target(args), args.evaluate, settings["images"], settings["linear"]))
    return _report(run_linear(_target(args), settings["images"], settings["linear"]))


def run_finetune_command(args: argparse.Namespace) -> int:
    settings = read_settings(args, FINETUNE, FINETUNE_OPTIONS)
    return _report(run_finetune(_target(args), settings["images"], settings["finetune"]))
