"""The DINO training loop: crops -> student/teacher -> loss -> AdamW step -> teacher EMA.

One function, :func:`train`, runs a whole run (or resumes it) in a single process or under
torchrun. The loop itself is :func:`train_one_epoch`; everything it needs is built once in
:func:`build_run`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dinossl.config import Config
from dinossl.data import (
    MultiCropDataset,
    ShardedEpochSampler,
    build_multicrop_transform,
    build_train_loader,
    open_images,
    to_model_input,
)
from dinossl.data.batched_crops import BatchedCropLoader, images_in_memory
from dinossl.errors import CheckpointError, DataError, DinoError
from dinossl.eval.knn import paired_bootstrap_interval
from dinossl.models import MultiCropNetwork, build_network
from dinossl.objective import CollapseMonitor, DINOLoss, cosine_schedule, teacher_temperature_schedule
from dinossl.train.checkpoint import CHECKPOINT_NAME, backbone_state_dict, export_backbone, save_checkpoint
from dinossl.train.distributed import (
    DistContext,
    PeerFailure,
    all_reduce,
    barrier,
    init_distributed,
    shutdown_distributed,
    synchronize_batchnorm,
)
from dinossl.train.optim import (
    build_optimizer,
    clip_gradients_per_tensor,
    drop_last_layer_gradients,
    set_lr_and_weight_decay,
)
from dinossl.train.knn_monitor import SampleKnnMonitor
from dinossl.train.optimizer_state import fit_optimizer_state
from dinossl.train.run_folder import check_run_folder, write_run_config
from dinossl.train.run_log import RunLog
from dinossl.train.step_stats import StepStats
from dinossl.train.teacher import ema_update, init_teacher

log = logging.getLogger("dinossl")

EXPORT_STEM = "teacher_backbone"


@dataclass
class Run:
    """Everything a training run holds between steps."""

    config: Config
    ctx: DistContext
    output_dir: Path
    student: MultiCropNetwork
    teacher: MultiCropNetwork
    student_ddp: nn.Module
    loss_fn: DINOLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: Optional[torch.dtype]
    sampler: ShardedEpochSampler
    loader: torch.utils.data.DataLoader | BatchedCropLoader
    lr: Any  # per-iteration schedules (numpy arrays)
    weight_decay: Any
    momentum: Any
    teacher_temp: Any  # per-epoch
    run_log: RunLog
    start_epoch: int = 0
    collapse: CollapseMonitor = field(default_factory=lambda: CollapseMonitor(out_dim=1))

    @cached_property
    def trainable_params(self) -> list[torch.Tensor]:
        return [p for p in self.student.parameters() if p.requires_grad]

    @property
    def global_batch(self) -> int:
        return self.config.train.batch_size_per_process * self.ctx.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch


@dataclass
class TrainResult:
    """What :func:`train` reports back."""

    output_dir: Path
    epochs_done: int
    last_epoch: dict[str, float]
    knn: Optional[dict[str, Any]]  # random_init, trained (percent), gain_ci95 [low, high] (points)
    exported: list[Path]


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype, or None for fp32. "auto": bf16 on GPUs that have it, else fp16; fp32 on CPU."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise DinoError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _seed_for_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed the step RNG (drop-path) from (seed, epoch, rank): resuming at an epoch boundary
    then draws exactly what an uninterrupted run draws, whatever the process count before."""
    torch.manual_seed(seed * 1_000_003 + epoch * 1009 + rank)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def build_run(config: Config, output_dir: str | Path, init_from: Optional[str] = None) -> Run:
    """Data, networks, loss, optimiser, schedules; resumes from ``output_dir`` when it holds
    a checkpoint of the same configuration."""
    output_dir = Path(output_dir)
    ctx = init_distributed(config.train.device, config.train.dist_timeout_s)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    checkpoint = check_run_folder(output_dir, config)

    source = open_images(config.data.path, "train")
    tcfg = config.train
    skipped_at_load = 0
    if config.data.geometric == "batched":  # decode once; unreadable files are dropped here
        source, skipped_at_load = images_in_memory(source)
    sampler = ShardedEpochSampler(len(source), tcfg.batch_size_per_process, ctx.rank, ctx.world_size, tcfg.seed)
    if sampler.steps_per_epoch == 0:
        raise DataError(
            f"{len(source)} images are fewer than one global batch of "
            f"{tcfg.batch_size_per_process * ctx.world_size}; lower train.batch_size_per_process"
        )
    if config.data.geometric == "batched":
        loader = BatchedCropLoader(source, sampler, tcfg.batch_size_per_process, config.data.crops, tcfg.seed)
    else:
        dataset = MultiCropDataset(source, build_multicrop_transform(config.data), tcfg.seed)
        loader = build_train_loader(
            dataset, sampler, tcfg.batch_size_per_process, config.data.num_workers, pin_memory=ctx.device.type == "cuda"
        )

    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    student = build_network(config.model, student=True)
    teacher = build_network(config.model, student=False)
    if init_from is not None and checkpoint is not None and ctx.is_main:
        log.warning("--init-from %s ignored: %s holds a checkpoint, which is resumed", init_from, output_dir)
    if init_from is not None and checkpoint is None:
        from dinossl.weights import load_backbone_into

        load_backbone_into(student.backbone, init_from)
        log.info("student backbone initialised from %s (fresh head)", init_from)
    if ctx.distributed and has_batchnorm(student):  # ResNet, or a head with BatchNorm
        student = synchronize_batchnorm(student, ctx.device)
        teacher = synchronize_batchnorm(teacher, ctx.device)
        if ctx.device.type != "cuda" and ctx.is_main:
            log.warning("BatchNorm statistics stay per process: SyncBatchNorm needs CUDA devices")
    init_teacher(teacher, student)
    student.to(ctx.device)
    teacher.to(ctx.device)
    teacher.train()  # BatchNorm (ResNet, BN head) normalises with batch statistics, as in the reference
    student_ddp: nn.Module = student
    if ctx.distributed:
        student_ddp = DistributedDataParallel(student, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    loss_fn = DINOLoss(config.model.out_dim, config.loss.student_temp, config.loss.center_momentum).to(ctx.device)
    optimizer = build_optimizer(student, config.optim)
    amp_dtype = resolve_precision(tcfg.precision, ctx.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    o, steps = config.optim, sampler.steps_per_epoch
    global_batch = tcfg.batch_size_per_process * ctx.world_size
    lr = cosine_schedule(o.base_lr * global_batch / 256.0, o.min_lr, tcfg.epochs, steps, o.warmup_epochs)
    weight_decay = cosine_schedule(o.weight_decay, o.weight_decay_end, tcfg.epochs, steps)
    momentum = cosine_schedule(o.momentum_teacher, 1.0, tcfg.epochs, steps)
    lc = config.loss
    teacher_temp = teacher_temperature_schedule(lc.warmup_teacher_temp, lc.teacher_temp, lc.warmup_teacher_temp_epochs, tcfg.epochs)

    run = Run(
        config=config, ctx=ctx, output_dir=output_dir, student=student, teacher=teacher, student_ddp=student_ddp,
        loss_fn=loss_fn, optimizer=optimizer, scaler=scaler, amp_dtype=amp_dtype, sampler=sampler, loader=loader,
        lr=lr, weight_decay=weight_decay, momentum=momentum, teacher_temp=teacher_temp,
        run_log=RunLog(output_dir, enabled=ctx.is_main), collapse=CollapseMonitor(out_dim=config.model.out_dim),
    )
    if o.warmup_epochs > tcfg.epochs and ctx.is_main:
        run.run_log.warn(
            f"optim.warmup_epochs={o.warmup_epochs} is longer than train.epochs={tcfg.epochs}: the lr stays on "
            f"its warm-up ramp and ends at {lr[-1]:.3g}, below the base lr {o.base_lr * global_batch / 256.0:.3g}"
        )
    if skipped_at_load:
        run.run_log.warn(f"skipped {skipped_at_load} unreadable images while loading {config.data.path} into memory",
                         skipped_images=skipped_at_load)
    if checkpoint is not None:
        _restore(run, checkpoint)
    elif ctx.is_main:
        write_run_config(output_dir, config)
    return run


def _restore(run: Run, checkpoint: dict[str, Any]) -> None:
    """Load student, teacher, optimiser, scaler and center; continue after the saved epoch."""
    try:
        run.student.load_state_dict(checkpoint["student"])
        run.teacher.load_state_dict(checkpoint["teacher"])
        run.optimizer.load_state_dict(fit_optimizer_state(
            checkpoint["optimizer"], run.optimizer, run.student, list(checkpoint["student"]),
            str(run.output_dir / CHECKPOINT_NAME)))
        run.loss_fn.center.copy_(checkpoint["dino_loss"]["center"].to(run.ctx.device))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{run.output_dir / CHECKPOINT_NAME} does not fit this model ({str(exc).splitlines()[0]})"
        ) from exc
    if checkpoint.get("fp16_scaler"):
        run.scaler.load_state_dict(checkpoint["fp16_scaler"])
    run.start_epoch = int(checkpoint["epoch"])
    saved_world = int(checkpoint.get("world_size", run.ctx.world_size))
    saved_batch = int(checkpoint.get("global_batch", run.global_batch))
    if saved_batch != run.global_batch and run.ctx.is_main:
        run.run_log.warn(
            f"resuming with global batch {run.global_batch} ({run.ctx.world_size} processes) instead of "
            f"{saved_batch} ({saved_world} processes): the lr is rescaled to the new batch and the "
            f"per-iteration schedules continue from the same fraction of training (epoch {run.start_epoch})"
        )
    log.info("resumed from %s at epoch %d", run.output_dir / CHECKPOINT_NAME, run.start_epoch)


def _checkpoint_state(run: Run, epochs_done: int) -> dict[str, Any]:
    return {
        "student": run.student.state_dict(),
        "teacher": run.teacher.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "epoch": epochs_done,
        "step": epochs_done * run.steps_per_epoch,
        "dino_loss": {"center": run.loss_fn.center.detach().cpu()},
        "fp16_scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
        "config": run.config.to_dict(),
        "world_size": run.ctx.world_size,
        "global_batch": run.global_batch,
    }


def training_step(
    run: Run, crops: list[torch.Tensor], step: int, teacher_temp: float, freeze_last_layer: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One DINO iteration on device-resident crops (2 global + N local, each (B, 3, S, S)):
    scheduled lr/wd, teacher and student forward, loss, backward, clipping, optimiser step,
    teacher EMA. Returns the detached loss and diagnostics; never syncs with the host."""
    cfg = run.config
    set_lr_and_weight_decay(run.optimizer, float(run.lr[step]), float(run.weight_decay[step]))
    device_type = crops[0].device.type
    with torch.autocast(device_type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
        with torch.no_grad():
            teacher_logits = run.teacher(crops[:2])
        student_logits = run.student_ddp(crops)
    loss, stats = run.loss_fn(student_logits, teacher_logits, teacher_temp)

    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if cfg.optim.clip_grad > 0:
        run.scaler.unscale_(run.optimizer)
        clip_gradients_per_tensor(run.trainable_params, cfg.optim.clip_grad)
    if freeze_last_layer:
        drop_last_layer_gradients(run.student)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    ema_update(run.teacher, run.student, float(run.momentum[step]))
    return loss.detach(), stats


def train_one_epoch(run: Run, epoch: int, progress: tqdm) -> dict[str, float]:
    """One pass over this process's shard; returns the epoch's mean statistics."""
    cfg, ctx, device = run.config, run.ctx, run.ctx.device
    run.sampler.set_epoch(epoch)
    _seed_for_epoch(cfg.train.seed, epoch, ctx.rank)
    temp = float(run.teacher_temp[epoch])
    freeze_last = epoch < cfg.optim.freeze_last_layer

    stats_sums = StepStats(device)
    skipped = 0
    last_time, last_step = time.perf_counter(), epoch * run.steps_per_epoch
    for it, (crops, _, n_skipped) in enumerate(run.loader):
        step = epoch * run.steps_per_epoch + it
        skipped += n_skipped
        if not crops:
            raise DataError(f"every image of the batch at step {step + 1} was unreadable; check the data folder")
        crops = [to_model_input(c, device) for c in crops]  # data.photometric=device: augmented here
        loss, stats = training_step(run, crops, step, temp, freeze_last)
        stats_sums.add(step, loss, stats)
        progress.update(1)

        if (step + 1) % cfg.train.log_every == 0 or it + 1 == run.steps_per_epoch:
            means = stats_sums.read("interval", run.steps_per_epoch, str(run.output_dir))
            now = time.perf_counter()
            images_per_s = (step + 1 - last_step) * run.global_batch / max(now - last_time, 1e-9)
            last_time, last_step = now, step + 1
            entry = {
                "kind": "step", "step": step + 1, "epoch": epoch + 1, "loss": means["loss"],
                "lr": float(run.lr[step]), "weight_decay": float(run.weight_decay[step]),
                "teacher_temp": temp, "momentum": float(run.momentum[step]),
                "teacher_entropy": means["teacher_entropy"], "kl": means["kl"],
                "center_norm": run.loss_fn.center.norm().item(), "images_per_s": images_per_s,
                "skipped_images": skipped,
            }
            run.run_log.write(entry)
            progress.set_postfix(loss=f"{means['loss']:.3f}", H=f"{means['teacher_entropy']:.2f}",
                                 kl=f"{means['kl']:.3f}", ips=f"{images_per_s:.0f}")
            warning = run.collapse.update(means["teacher_entropy"], means["kl"])
            if warning:
                run.run_log.warn(f"step {step + 1}: {warning}", step=step + 1)

    means = stats_sums.read("epoch", run.steps_per_epoch, str(run.output_dir))
    skipped_total = int(all_reduce(torch.tensor([skipped], device=device, dtype=torch.float64), "sum").item())
    if skipped_total:
        run.run_log.warn(f"epoch {epoch + 1}: skipped {skipped_total} unreadable images", epoch=epoch + 1)
    return {"loss": means["loss"], "teacher_entropy": means["teacher_entropy"], "kl": means["kl"],
            "skipped_images": skipped_total}


def train(
    config: Config, output_dir: str | Path, init_from: Optional[str] = None, stop_after_epochs: Optional[int] = None
) -> TrainResult:
    """Pretrain (or resume) a DINO run in ``output_dir``; exports the teacher backbone at the end.

    ``stop_after_epochs`` ends this invocation after that many more epochs (checkpoint written,
    no export), leaving a run that a later call resumes.
    """
    run = build_run(config, output_dir, init_from)
    try:
        result = _train(run, stop_after_epochs)
        if run.ctx.owns_process_group:
            shutdown_distributed()
        return result
    except (RuntimeError, dist.DistError) as exc:
        if run.ctx.distributed and _is_peer_failure(exc):
            raise PeerFailure(
                f"rank {run.ctx.rank}: lost contact with another process of the run "
                f"({str(exc).strip().splitlines()[0][:200]}); the last checkpoint in {run.output_dir} is untouched"
            ) from exc
        raise
    finally:
        run.run_log.close()


def _is_peer_failure(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "peer"))


def _knn_monitor(run: Run) -> Optional[SampleKnnMonitor]:
    """The sample k-NN monitor when asked for (rank 0, built-in sample only)."""
    cfg = run.config
    if not (cfg.train.knn_at_end or cfg.train.knn_every) or not run.ctx.is_main:
        return None
    if cfg.data.path is not None:
        log.info("train.knn_at_end / knn_every use the built-in sample's labels; run `dino eval knn` for %s",
                 cfg.data.path)
        return None
    return SampleKnnMonitor(cfg.data.crops.global_size, run.ctx.device)


def _train(run: Run, stop_after_epochs: Optional[int] = None) -> TrainResult:
    cfg, ctx = run.config, run.ctx
    total_steps = cfg.train.epochs * run.steps_per_epoch
    if ctx.is_main:
        log.info(
            "training %s (%s) for %d epochs x %d steps, global batch %d (%d process%s), %s, precision %s",
            cfg.model.arch, "sample data" if cfg.data.path is None else cfg.data.path, cfg.train.epochs,
            run.steps_per_epoch, run.global_batch, ctx.world_size, "es" if ctx.world_size > 1 else "",
            ctx.device, "fp32" if run.amp_dtype is None else str(run.amp_dtype).replace("torch.", ""),
        )
    last_epoch: dict[str, float] = {}
    monitor = _knn_monitor(run)
    end_epoch = cfg.train.epochs
    if stop_after_epochs is not None:
        end_epoch = min(end_epoch, run.start_epoch + stop_after_epochs)
    progress = tqdm(total=total_steps, initial=run.start_epoch * run.steps_per_epoch, unit="step",
                    disable=not (ctx.is_main and cfg.train.progress_bar), dynamic_ncols=True, desc="dino")
    try:
        for epoch in range(run.start_epoch, end_epoch):
            started = time.perf_counter()
            last_epoch = train_one_epoch(run, epoch, progress)
            last_epoch["seconds"] = time.perf_counter() - started
            if ctx.is_main:
                run.run_log.write({"kind": "epoch", "epoch": epoch + 1, **last_epoch,
                                   "teacher_temp": float(run.teacher_temp[epoch]),
                                   "center_norm": run.loss_fn.center.norm().item()})
                save_checkpoint(_checkpoint_state(run, epoch + 1), run.output_dir / CHECKPOINT_NAME)
                if monitor is not None and cfg.train.knn_every and (epoch + 1) % cfg.train.knn_every == 0:
                    top1 = monitor.top1(run.teacher.backbone)
                    run.run_log.write({"kind": "knn", "epoch": epoch + 1, "knn_top1_k20": top1})
                    progress.write(f"epoch {epoch + 1}: teacher k-NN top-1 on the held-out sample {top1:.1f}%")
            barrier()
    finally:
        progress.close()
    if end_epoch < cfg.train.epochs:
        return TrainResult(run.output_dir, end_epoch, last_epoch, None, [])

    exported: list[Path] = []
    if ctx.is_main:
        teacher_backbone = backbone_state_dict(run.teacher.state_dict())
        exported = export_backbone(teacher_backbone, run.output_dir / EXPORT_STEM)
        log.info("teacher backbone exported to %s", ", ".join(str(p) for p in exported))
    knn = None
    if cfg.train.knn_at_end and ctx.is_main and monitor is not None:
        knn = knn_against_random_init(run, monitor)
    barrier()
    return TrainResult(run.output_dir, cfg.train.epochs, last_epoch, knn, exported)


def knn_against_random_init(run: Run, monitor: SampleKnnMonitor) -> dict[str, float]:
    """k-NN top-1 on the sample's held-out part: trained teacher vs. the same network at its
    random initialisation (rebuilt from the run's seed, exactly as the run started)."""
    torch.manual_seed(run.config.train.seed)
    random_init = build_network(run.config.model, student=True).backbone.to(run.ctx.device)
    random_correct, trained_correct = monitor.correct(random_init), monitor.correct(run.teacher.backbone)
    low, high = paired_bootstrap_interval(trained_correct, random_correct)
    results = {"random_init": 100.0 * int(random_correct.sum()) / len(random_correct),
               "trained": 100.0 * int(trained_correct.sum()) / len(trained_correct), "gain_ci95": [low, high]}
    run.run_log.write({"kind": "result", "metric": "knn_top1_k20", **results,
                       "bank_images": len(monitor.bank_source), "query_images": len(monitor.query_source)})
    return results
