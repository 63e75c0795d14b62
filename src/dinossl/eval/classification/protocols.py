"""The feature evaluations end to end: k-NN, linear probe and fine-tuning.

``*_protocol`` functions take a backbone module and labelled folders and return figures, so
baselines (random initialisation, raw pixels) go through the same code. ``run_*`` functions
do what the ``dino eval`` commands need around them: check the inputs and the results path
before any work, load the weights, join the process group under torchrun, write the JSON.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

from dinossl.data.augment import evaluation_transform
from dinossl.data.images import ImageFolder
from dinossl.errors import DinoError
from dinossl.eval.classification.finetune import (
    FinetuneModel,
    FinetuneSettings,
    finetune,
    finetune_train_transform,
)
from dinossl.eval.classification.knn import KnnSettings, knn_hits
from dinossl.eval.classification.labelled_splits import LabelledSplits, open_splits, open_val
from dinossl.eval.classification.linear import (
    EpochEnd,
    LinearSettings,
    frozen_feature_batches,
    linear_train_transform,
    loader_batches,
    tensor_batches,
    train_linear_classifier,
)
from dinossl.eval.classification.probe_checkpoint import ProbeCheckpoint
from dinossl.eval.classification.saved_probes import BestHeadWriter, BestNetworkWriter, resume_state
from dinossl.eval.classification.supervised import (
    accuracy,
    evaluation_loader,
    summarise,
    training_loader,
)
from dinossl.eval.feature_cache import FeatureCache, Features
from dinossl.eval.features import (
    FeatureSpec,
    extract_features,
    feature_dim,
    shard_indices,
)
from dinossl.eval.results import write_results
from dinossl.inference import BackboneHarness, TransformedImages, describe_backbone, weights_identity
from dinossl.inference.identity import local_weights
from dinossl.eval.validation import require_non_negative, require_positive
from dinossl.outputs import check_writable, default_output_folder, usable_output_folder
from dinossl.runtime.folder_lock import folder_lock
from dinossl.runtime.distributed import (
    DistContext,
    all_reduce,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from dinossl.weights.linear_head import read_linear_head

log = logging.getLogger("dinossl")

LINEAR_AUGMENTED = "linear probe (RandomResizedCrop + flip)"
LINEAR_CACHED = "linear probe on cached center-crop features (no augmentation)"
FINETUNE = "fine-tuning (DeiT recipe on timm)"
LINEAR_SAVED = "saved linear head (no training)"
KNN = "weighted k-NN"
RESULTS_NAME = "results.json"


@dataclass(frozen=True)
class ImageSettings:
    """Evaluation images: bicubic resize of the short side, center crop; extraction batches."""

    resize: int = 256
    crop: int = 224
    batch_size: int = 256  # images per forward pass, per process
    num_workers: int = 4

    def __post_init__(self) -> None:
        require_positive(self, "resize", "crop", "batch_size")
        require_non_negative(self, "num_workers")
        if self.resize < self.crop:
            raise DinoError(f"resize ({self.resize}) must be at least crop ({self.crop})")

    def check(self, backbone: nn.Module) -> None:
        """A ViT needs crops divisible by its patch size."""
        patch = getattr(backbone, "patch_size", None)
        if patch and self.crop % int(patch):
            raise DinoError(f"crop {self.crop} is not a multiple of the backbone's patch size {patch}")


def default_spec(backbone: nn.Module, n_last_blocks: Optional[int] = None, avgpool: bool = False) -> FeatureSpec:
    """The linear protocol's features: ViT -> CLS of the last 4 blocks (fewer if the ViT is
    shallower), or with ``avgpool`` the last CLS + mean patch token; others -> their output."""
    blocks = getattr(backbone, "blocks", None)
    if n_last_blocks is None:
        n_last_blocks = 1 if (avgpool or blocks is None) else min(4, len(blocks))
    spec = FeatureSpec(n_last_blocks=n_last_blocks, avgpool=avgpool)
    spec.check(backbone)
    return spec


def split_features(
    name: str, source: ImageFolder, backbone: nn.Module, spec: FeatureSpec, images: ImageSettings,
    ctx: DistContext, cache: Optional[FeatureCache] = None,
) -> Features:
    """Center-crop features (N, D) and labels (N,) of one split, from the cache when it has them."""
    def compute() -> Features:
        start = time.perf_counter()
        result = extract_features(backbone, source, evaluation_transform(images.resize, images.crop),
                                  batch_size=images.batch_size, device=ctx.device,
                                  num_workers=images.num_workers, spec=spec, ctx=ctx)
        log.info("features: %s, %d images -> %s in %.1f s", name, len(source), tuple(result[0].shape),
                 time.perf_counter() - start)
        return result

    if cache is None:
        return compute()
    settings = {
        "split": name, "data": {"root": str(Path(source.root).resolve()), "images": len(source), "classes": source.classes},
        "spec": asdict(spec), "resize": images.resize, "crop": images.crop,
    }
    return cache.get_or_compute(name, settings, compute, ctx)


def knn_protocol(
    backbone: nn.Module, splits: LabelledSplits, images: ImageSettings, settings: KnnSettings,
    ctx: DistContext, cache: Optional[FeatureCache] = None,
) -> dict[str, Any]:
    """Backbone-output features of train (bank) and val (queries); top-1/top-5 per k.
    Under torchrun each process classifies a slice of the queries."""
    spec = FeatureSpec()
    bank, bank_labels = split_features("train", splits.train, backbone, spec, images, ctx, cache)
    queries, query_labels = split_features("val", splits.val, backbone, spec, images, ctx, cache)
    return knn_results(bank, bank_labels, queries, query_labels, len(splits.classes), settings, ctx)


def knn_results(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                num_classes: int, settings: KnnSettings, ctx: DistContext) -> dict[str, Any]:
    """Top-1/top-5 per k of the queries (N, D) against the bank (M, D) (features as computed,
    normalised inside); under torchrun each process classifies a slice of the queries."""
    mine = torch.as_tensor(shard_indices(queries.shape[0], ctx.rank, ctx.world_size))
    hits = knn_hits(bank.to(ctx.device), bank_labels, queries[mine], query_labels[mine], settings.ks,
                    num_classes=num_classes, temperature=settings.temperature,
                    query_chunk=settings.query_chunk, bank_chunk=settings.bank_chunk)
    ks = sorted(hits)
    counts = torch.tensor([hits[k] for k in ks], dtype=torch.float64, device=ctx.device)
    all_reduce(counts, "sum")
    total = queries.shape[0]
    return {
        "knn": {str(k): {"top1": 100.0 * counts[i, 0].item() / total, "top5": 100.0 * counts[i, 1].item() / total}
                for i, k in enumerate(ks)},
        "bank_images": int(bank.shape[0]), "query_images": int(total), "feature_dim": int(bank.shape[1]),
    }


def linear_protocol(
    backbone: nn.Module, splits: LabelledSplits, images: ImageSettings, settings: LinearSettings,
    spec: FeatureSpec, ctx: DistContext, cache: Optional[FeatureCache] = None,
    resume: Optional[dict[str, Any]] = None, on_epoch: Optional[Callable[[EpochEnd], None]] = None,
) -> dict[str, Any]:
    """Train a linear classifier on frozen ``spec`` features of train; evaluate on val's center
    crops. ``settings.cached``: train on center-crop features too (no augmentation). ``resume``
    and ``on_epoch``: see :func:`~dinossl.eval.classification.linear.train_linear_classifier`."""
    spec.check(backbone)
    backbone.eval()
    val_features, val_labels = split_features("val", splits.val, backbone, spec, images, ctx, cache)
    if settings.cached:
        train_features, train_labels = split_features("train", splits.train, backbone, spec, images, ctx, cache)
        loader = training_loader(TensorDataset(train_features, train_labels), settings.batch_size, ctx,
                                 seed=settings.seed, collate=None)
        batches = loader_batches(loader, ctx.device)
    else:
        dataset = TransformedImages(splits.train, linear_train_transform(images.crop))
        loader = training_loader(dataset, settings.batch_size, ctx, seed=settings.seed, num_workers=images.num_workers)
        batches = frozen_feature_batches(backbone, spec, loader, ctx.device)
    _, history = train_linear_classifier(batches, len(loader), val_features, val_labels, len(splits.classes),
                                         settings, device=ctx.device, ctx=ctx, resume=resume, on_epoch=on_epoch)
    return {**summarise(history), "feature_dim": int(val_features.shape[1]), "history": history}


def finetune_protocol(
    backbone: nn.Module, splits: LabelledSplits, images: ImageSettings, settings: FinetuneSettings, ctx: DistContext,
    resume: Optional[dict[str, Any]] = None, on_epoch: Optional[Callable[[EpochEnd], None]] = None,
) -> dict[str, Any]:
    """Fine-tune ``backbone`` (modified in place) with a new linear classifier; val top-1/top-5.
    ``resume`` and ``on_epoch``: see :func:`~dinossl.eval.classification.finetune.finetune`."""
    dim = feature_dim(backbone, FeatureSpec(), images.crop, ctx.device)
    torch.manual_seed(settings.seed)
    model = FinetuneModel(backbone, dim, len(splits.classes)).to(ctx.device)
    train_set = TransformedImages(splits.train, finetune_train_transform(images.crop, settings))
    val_set = TransformedImages(splits.val, evaluation_transform(images.resize, images.crop))
    train_loader = training_loader(train_set, settings.batch_size, ctx, seed=settings.seed, num_workers=images.num_workers)
    val_loader = evaluation_loader(val_set, images.batch_size, ctx, num_workers=images.num_workers)
    history = finetune(model, train_loader, val_loader, len(splits.classes), settings, device=ctx.device, ctx=ctx,
                       resume=resume, on_epoch=on_epoch)
    saved = next((entry for entry in reversed(history) if "saved" in entry), None)
    network = {"epoch": saved["epoch"], "network": saved["saved"]} if saved is not None else None
    return {**summarise(history), "saved_network": network, "history": history}


@dataclass(frozen=True)
class EvalTarget:
    """What an evaluation command evaluates, on which data, and where the results go."""

    weights: str | Path  # training checkpoint, backbone file (.pth / .safetensors), or what load_backbone accepts
    which: str = "teacher"  # network of a training checkpoint: teacher or student
    data: Optional[Path] = None  # folder with train/ and val/ (or test/)
    train: Optional[Path] = None
    val: Optional[Path] = None
    device: str = "auto"
    output: Optional[Path] = None  # results folder; default: eval-<name>-<data>-<weights> here
    overwrite: bool = False
    features_dir: Optional[Path] = None  # cache of extracted features
    dist_timeout_s: int = 1800
    # CUDA arithmetic
    tf32: bool = True  # on CUDA, fp32 matmuls and convolutions in TF32 (False: IEEE fp32)

    def harness(self, images: Optional[ImageSettings] = None) -> BackboneHarness:
        """The backbone and how it runs (batches and workers from ``images``)."""
        images = images or ImageSettings()
        return BackboneHarness(self.weights, self.which, self.device, tf32=self.tf32, batch_size=images.batch_size,
                               num_workers=images.num_workers, progress=False)

    @property
    def local_weights(self) -> Optional[Path]:
        """The weights as a local file, None for a released name or URL."""
        return local_weights(self.weights)

    def weights_identity(self) -> dict[str, Any]:
        """What identifies the weights for the feature cache and the results file."""
        return weights_identity(self.weights, self.which)

    def output_folder(self, evaluation: str) -> Path:
        """Where the results go: ``output``, else ``eval-<evaluation>-<data>-<weights>`` here."""
        if self.output is not None:
            return Path(self.output)
        data = self.data if self.data is not None else self.train
        return default_output_folder(f"eval-{evaluation}", self.weights, data, self.which)


Body = Callable[[nn.Module, Any, DistContext, Optional[FeatureCache], Path], tuple[str, dict, dict]]


def _probe_identity(target: EvalTarget, evaluation: str, data: Any, images: ImageSettings,
                    settings: Any) -> dict[str, Any]:
    """What a probe checkpoint must match to be resumed (the number of loader processes may change)."""
    image_settings = {k: v for k, v in asdict(images).items() if k != "num_workers"}
    return {"evaluation": evaluation, "weights": target.weights_identity(), "data": data.describe(),
            "images": image_settings, "settings": asdict(settings)}


def _run(target: EvalTarget, evaluation: str, images: ImageSettings, body: Body, resumable: bool = False,
         open_data: Optional[Callable[[], Any]] = None) -> Optional[dict[str, Any]]:
    """Checks (every process, before any collective), then ``body``, then the results file.
    A ``resumable`` evaluation may use a folder that holds its checkpoint (it resumes there).
    Returns the results record on the main process, None on the others."""
    harness = target.harness(images)  # checks which, batch size and workers
    folder = target.output_folder(evaluation)
    resuming = resumable and (folder / f"{evaluation}_checkpoint.pth").is_file()
    folder = check_writable(folder) if resuming else usable_output_folder(folder, target.overwrite)
    output = folder / RESULTS_NAME
    harness.resolve_device()  # a bad --device is reported before any download
    splits = open_data() if open_data is not None else open_splits(target.data, target.train, target.val)
    backbone = harness.load_module()
    images.check(backbone)
    owns_group = not (dist.is_available() and dist.is_initialized())
    ctx = init_distributed(target.device, target.dist_timeout_s)
    try:
        with folder_lock(folder, f"dino eval {evaluation}", ctx):  # one process per output folder
            backbone = harness.place(backbone, ctx.device).module
            cache = None
            if target.features_dir is not None:
                cache = FeatureCache(Path(target.features_dir), target.weights_identity())
            start = time.perf_counter()
            protocol, settings, results = body(backbone, splits, ctx, cache, folder)
            record = {
                "evaluation": evaluation, "protocol": protocol,
                "weights": harness.describe(backbone),
                "backbone": describe_backbone(backbone), "data": splits.describe(), "settings": settings,
                "results": results, "processes": ctx.world_size, "device": str(ctx.device),
                "wall_s": round(time.perf_counter() - start, 1),
            }
            if ctx.is_main:
                write_results(output, record, overwrite=target.overwrite or resuming)
                log.info("results written to %s", output)
            barrier()
            return record if ctx.is_main else None
    finally:  # every exit, errors included
        if owns_group:
            shutdown_distributed()


def run_knn(target: EvalTarget, images: ImageSettings = ImageSettings(),
            settings: KnnSettings = KnnSettings()) -> Optional[dict[str, Any]]:
    """``dino eval knn``: weighted k-NN of the backbone's output features."""
    def body(backbone, splits, ctx, cache, folder):
        results = knn_protocol(backbone, splits, images, settings, ctx, cache)
        return KNN, {**asdict(images), **asdict(settings), "features": "backbone output (ViT: CLS), L2-normalised"}, results

    return _run(target, "knn", images, body)


def run_linear(target: EvalTarget, images: ImageSettings = ImageSettings(),
               settings: LinearSettings = LinearSettings()) -> Optional[dict[str, Any]]:
    """``dino eval linear``: linear probe on frozen features (see :func:`default_spec`). The best
    head goes to ``linear_head.safetensors`` + ``.json``; a killed probe resumes in its folder."""
    def body(backbone, splits, ctx, cache, folder):
        spec = default_spec(backbone, settings.n_last_blocks, settings.avgpool)
        checkpoint = ProbeCheckpoint.in_folder(folder, "linear", _probe_identity(target, "linear", splits, images,
                                                                               settings), writer=ctx.is_main)
        resume = resume_state(checkpoint, target.overwrite)
        info = {"classes": splits.classes, "resize": images.resize, "crop": images.crop,
                "weights": {"source": str(target.weights), "which": target.which},
                "protocol": LINEAR_CACHED if settings.cached else LINEAR_AUGMENTED}
        writer = BestHeadWriter(folder, checkpoint, spec.n_last_blocks, spec.avgpool, info)
        results = linear_protocol(backbone, splits, images, settings, spec, ctx, cache, resume, writer)
        checkpoint.remove()
        recorded = {**asdict(images), **asdict(settings), "lr": settings.lr, **asdict(spec)}
        return (LINEAR_CACHED if settings.cached else LINEAR_AUGMENTED), recorded, results

    return _run(target, "linear", images, body, resumable=True)


def evaluate_linear_head(target: EvalTarget, head_source: str | Path, images: ImageSettings = ImageSettings(),
                         settings: LinearSettings = LinearSettings()) -> Optional[dict[str, Any]]:
    """``dino eval linear --evaluate HEAD``: top-1/top-5 of a saved linear head (a ``dino eval
    linear`` folder or file, or the reference's ``*_linearweights.pth``) on the val folder's
    center crops, without training. The head's recorded features win; a reference head reads
    the features ``settings`` describe."""
    if target.train is not None:
        raise DinoError("--evaluate scores the val images only; give --data or --val, not --train")

    def body(backbone, val, ctx, cache, folder):
        spec = default_spec(backbone, settings.n_last_blocks, settings.avgpool)
        head = read_linear_head(head_source, settings.n_last_blocks, settings.avgpool or None)
        if head.info.get("layout") == "reference":
            head = read_linear_head(head_source, spec.n_last_blocks, spec.avgpool)
        spec = FeatureSpec(head.n_last_blocks, head.avgpool)
        spec.check(backbone)
        classes = head.info.get("classes")
        if classes is not None and list(classes) != val.classes:
            raise DinoError(f"{head_source} was trained on the classes {classes[:5]}..., the val folder has "
                            f"{val.classes[:5]}...")
        if head.num_classes != len(val.classes):
            raise DinoError(f"{head_source} has {head.num_classes} classes, the val folder {len(val.classes)}")
        dim = feature_dim(backbone, spec, images.crop, ctx.device)
        if dim != head.feature_dim:
            raise DinoError(f"{head_source} reads {head.feature_dim} features, the backbone gives {dim} "
                            f"(n_last_blocks={spec.n_last_blocks}, avgpool={spec.avgpool})")
        features, labels = split_features("val", val.val, backbone, spec, images, ctx, cache)
        linear = nn.Linear(head.feature_dim, head.num_classes).to(ctx.device)
        linear.load_state_dict({"weight": head.weight, "bias": head.bias})
        scores = accuracy(linear, tensor_batches(features.to(ctx.device), labels.to(ctx.device), 4096), ctx.device)
        results = {**scores, "feature_dim": head.feature_dim, "head": str(head_source),
                   "head_epoch": head.info.get("epoch")}
        return LINEAR_SAVED, {**asdict(images), **asdict(spec)}, results

    return _run(target, "linear", images, body, open_data=lambda: open_val(target.data, target.val))


def run_finetune(target: EvalTarget, images: ImageSettings = ImageSettings(),
                 settings: FinetuneSettings = FinetuneSettings()) -> Optional[dict[str, Any]]:
    """``dino eval finetune``: fine-tune the whole backbone with a linear classifier. The best
    network goes to ``finetuned.safetensors`` + ``.json``; a killed run resumes in its folder."""
    def body(backbone, splits, ctx, cache, folder):
        checkpoint = ProbeCheckpoint.in_folder(folder, "finetune", _probe_identity(target, "finetune", splits, images,
                                                                                   settings), writer=ctx.is_main)
        resume = resume_state(checkpoint, target.overwrite)
        info = {"classes": splits.classes, "resize": images.resize, "crop": images.crop,
                "weights": {"source": str(target.weights), "which": target.which}, "protocol": FINETUNE}
        results = finetune_protocol(backbone, splits, images, settings, ctx, resume,
                                    BestNetworkWriter(folder, checkpoint, info))
        checkpoint.remove()
        return FINETUNE, {**asdict(images), **asdict(settings), "lr": settings.lr}, results

    return _run(target, "finetune", images, body, resumable=True)
