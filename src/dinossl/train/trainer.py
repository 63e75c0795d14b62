"""The DINO training loop: crops -> distiller step -> statistics, checkpoints and monitors.

One function, :func:`train`, runs a whole run (or resumes it) in a single process or under
torchrun. The loop itself is :func:`train_one_epoch`; everything it needs is built once in
:func:`build_run`. What looks at the networks during training (e.g. a k-NN check) is handed in
as :class:`RunMonitor` objects, so this layer needs nothing from the evaluations.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import torch
from torch import distributed as dist
from tqdm import tqdm

from dinossl.config import Config
from dinossl.data import to_model_input
from dinossl.data.crop_recipe import CropRecipe
from dinossl.data.training_data import TrainingData, build_training_data
from dinossl.errors import DataError
from dinossl.objective import CollapseMonitor, TrainingSchedules, build_schedules, scaled_lr
from dinossl.runtime.distributed import (
    DistContext,
    PeerFailure,
    all_reduce,
    barrier,
    init_distributed,
    is_peer_failure,
    shutdown_distributed,
)
from dinossl.train.checkpoint import (
    CHECKPOINT_NAME,
    export_teacher_backbone,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from dinossl.train.distiller import Distiller, build_distiller
from dinossl.train.run_folder import check_run_folder, write_run_config
from dinossl.train.run_log import RunLog
from dinossl.train.step_stats import StepStats

log = logging.getLogger("dinossl")


@dataclass(frozen=True)
class MonitorReport:
    """What a monitor found: a record for ``log.jsonl`` (with its ``kind``) and an optional console line."""

    record: dict[str, Any]
    message: Optional[str] = None


class RunMonitor(Protocol):
    """Looks at the networks during training; called on the main process only."""

    def after_epoch(self, epoch: int, distiller: Distiller) -> Optional[MonitorReport]:
        """After epoch ``epoch`` (1-based) was checkpointed."""

    def after_training(self, distiller: Distiller) -> Optional[MonitorReport]:
        """After the last epoch and the export."""


@dataclass
class TrainingRun:
    """Everything a training run holds between steps."""

    config: Config
    ctx: DistContext
    output_dir: Path
    recipe: CropRecipe
    data: TrainingData
    distiller: Distiller
    schedules: TrainingSchedules
    run_log: RunLog
    start_epoch: int = 0
    collapse: CollapseMonitor = field(default_factory=lambda: CollapseMonitor(out_dim=1))

    @property
    def global_batch(self) -> int:
        return self.config.train.batch_size_per_process * self.ctx.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.data.steps_per_epoch


@dataclass
class TrainResult:
    """What :func:`train` reports back."""

    output_dir: Path
    epochs_done: int
    last_epoch: dict[str, float]
    reports: list[dict[str, Any]]  # the monitors' records after training
    exported: list[Path]


def _seed_for_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed the step RNG (drop-path) from (seed, epoch, rank): resuming at an epoch boundary
    then draws exactly what an uninterrupted run draws, whatever the process count before."""
    torch.manual_seed(seed * 1_000_003 + epoch * 1009 + rank)


def build_run(config: Config, output_dir: str | Path, init_from: Optional[str] = None) -> TrainingRun:
    """Data, distiller and schedules; resumes from ``output_dir`` when it holds a checkpoint of
    the same configuration."""
    output_dir = Path(output_dir)
    ctx = init_distributed(config.train.device, config.train.dist_timeout_s)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    checkpoint = check_run_folder(output_dir, config)

    recipe = CropRecipe.from_config(config.data.crops)
    tcfg = config.train
    data = build_training_data(config.data, recipe, tcfg.batch_size_per_process, ctx.rank, ctx.world_size,
                               tcfg.seed, ctx.device)
    if init_from is not None and checkpoint is not None and ctx.is_main:
        log.warning("--init-from %s ignored: %s holds a checkpoint, which is resumed", init_from, output_dir)
    distiller = build_distiller(config, ctx, recipe.num_global, init_from if checkpoint is None else None)
    global_batch = tcfg.batch_size_per_process * ctx.world_size
    schedules = build_schedules(config.optim, config.loss, tcfg.epochs, data.steps_per_epoch, global_batch)

    run = TrainingRun(
        config=config, ctx=ctx, output_dir=output_dir, recipe=recipe, data=data, distiller=distiller,
        schedules=schedules, run_log=RunLog(output_dir, enabled=ctx.is_main),
        collapse=CollapseMonitor(out_dim=config.model.out_dim),
    )
    o = config.optim
    if o.warmup_epochs > tcfg.epochs and ctx.is_main:
        run.run_log.warn(
            f"optim.warmup_epochs={o.warmup_epochs} is longer than train.epochs={tcfg.epochs}: the lr stays on "
            f"its warm-up ramp and ends at {schedules.lr[-1]:.3g}, below the base lr "
            f"{scaled_lr(o.base_lr, global_batch):.3g}"
        )
    if data.skipped_at_load:
        run.run_log.warn(f"skipped {data.skipped_at_load} unreadable images while loading {config.data.path} into memory",
                         skipped_images=data.skipped_at_load)
    if checkpoint is not None:
        _resume(run, checkpoint)
    elif ctx.is_main:
        write_run_config(output_dir, config)
    return run


def _resume(run: TrainingRun, checkpoint: dict[str, Any]) -> None:
    """Continue after the checkpoint's epoch, saying so when the global batch changed."""
    run.start_epoch = restore_training_state(run.distiller, checkpoint, run.output_dir / CHECKPOINT_NAME)
    saved_world = int(checkpoint.get("world_size", run.ctx.world_size))
    saved_batch = int(checkpoint.get("global_batch", run.global_batch))
    if saved_batch != run.global_batch and run.ctx.is_main:
        run.run_log.warn(
            f"resuming with global batch {run.global_batch} ({run.ctx.world_size} processes) instead of "
            f"{saved_batch} ({saved_world} processes): the lr is rescaled to the new batch and the "
            f"per-iteration schedules continue from the same fraction of training (epoch {run.start_epoch})"
        )
    log.info("resumed from %s at epoch %d", run.output_dir / CHECKPOINT_NAME, run.start_epoch)


def train_one_epoch(run: TrainingRun, epoch: int, progress: tqdm) -> dict[str, float]:
    """One pass over this process's shard; returns the epoch's mean statistics."""
    cfg, ctx, device = run.config, run.ctx, run.ctx.device
    run.data.sampler.set_epoch(epoch)
    _seed_for_epoch(cfg.train.seed, epoch, ctx.rank)

    stats_sums = StepStats(device)
    skipped = 0
    last_time, last_step = time.perf_counter(), epoch * run.steps_per_epoch
    for it, (crops, _, n_skipped) in enumerate(run.data.loader):
        step = epoch * run.steps_per_epoch + it
        skipped += n_skipped
        if not crops:
            raise DataError(f"every image of the batch at step {step + 1} was unreadable; check the data folder")
        crops = [to_model_input(c, device) for c in crops]  # data.photometric=device: augmented here
        values = run.schedules.at(step)
        loss, stats = run.distiller.step(crops, values)
        stats_sums.add(step, loss, stats)
        progress.update(1)

        if (step + 1) % cfg.train.log_every == 0 or it + 1 == run.steps_per_epoch:
            means = stats_sums.read("interval", run.steps_per_epoch, str(run.output_dir))
            now = time.perf_counter()
            images_per_s = (step + 1 - last_step) * run.global_batch / max(now - last_time, 1e-9)
            last_time, last_step = now, step + 1
            entry = {
                "kind": "step", "step": step + 1, "epoch": epoch + 1, "loss": means["loss"],
                "lr": values.lr, "weight_decay": values.weight_decay,
                "teacher_temp": values.teacher_temp, "momentum": values.momentum,
                "teacher_entropy": means["teacher_entropy"], "kl": means["kl"],
                "center_norm": run.distiller.loss_fn.center.norm().item(), "images_per_s": images_per_s,
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
    config: Config, output_dir: str | Path, init_from: Optional[str] = None, stop_after_epochs: Optional[int] = None,
    monitors: Sequence[RunMonitor] = (),
) -> TrainResult:
    """Pretrain (or resume) a DINO run in ``output_dir``; exports the teacher backbone at the end.

    ``stop_after_epochs`` ends this invocation after that many more epochs (checkpoint written,
    no export), leaving a run that a later call resumes. ``monitors`` look at the networks after
    each epoch and after training (main process only); their records go to ``log.jsonl``.
    """
    run = build_run(config, output_dir, init_from)
    try:
        result = _train(run, stop_after_epochs, monitors)
        if run.ctx.owns_process_group:
            shutdown_distributed()
        return result
    except (RuntimeError, dist.DistError) as exc:
        if run.ctx.distributed and is_peer_failure(exc):
            raise PeerFailure(
                f"rank {run.ctx.rank}: lost contact with another process of the run "
                f"({str(exc).strip().splitlines()[0][:200]}); the last checkpoint in {run.output_dir} is untouched"
            ) from exc
        raise
    finally:
        run.run_log.close()


def _report(run: TrainingRun, report: Optional[MonitorReport], progress: Optional[tqdm] = None) -> None:
    if report is None:
        return
    run.run_log.write(report.record)
    if report.message:
        (progress.write if progress is not None else log.info)(report.message)


def _train(run: TrainingRun, stop_after_epochs: Optional[int], monitors: Sequence[RunMonitor]) -> TrainResult:
    cfg, ctx = run.config, run.ctx
    total_steps = cfg.train.epochs * run.steps_per_epoch
    if ctx.is_main:
        amp = run.distiller.amp_dtype
        log.info(
            "training %s (%s) for %d epochs x %d steps, global batch %d (%d process%s), %s, precision %s",
            cfg.model.arch, "sample data" if cfg.data.path is None else cfg.data.path, cfg.train.epochs,
            run.steps_per_epoch, run.global_batch, ctx.world_size, "es" if ctx.world_size > 1 else "",
            ctx.device, "fp32" if amp is None else str(amp).replace("torch.", ""),
        )
    monitors = monitors if ctx.is_main else ()
    last_epoch: dict[str, float] = {}
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
                                   "teacher_temp": float(run.schedules.teacher_temp[epoch]),
                                   "center_norm": run.distiller.loss_fn.center.norm().item()})
                state = training_state(run.distiller, cfg, epoch + 1, run.steps_per_epoch, ctx.world_size,
                                       run.global_batch)
                save_checkpoint(state, run.output_dir / CHECKPOINT_NAME)
                for monitor in monitors:
                    _report(run, monitor.after_epoch(epoch + 1, run.distiller), progress)
            barrier()
    finally:
        progress.close()
    if end_epoch < cfg.train.epochs:
        return TrainResult(run.output_dir, end_epoch, last_epoch, [], [])

    exported: list[Path] = []
    reports: list[dict[str, Any]] = []
    if ctx.is_main:
        exported = export_teacher_backbone(run.distiller, run.output_dir)
        log.info("teacher backbone exported to %s", ", ".join(str(p) for p in exported))
        for monitor in monitors:
            report = monitor.after_training(run.distiller)
            _report(run, report)
            if report is not None:
                reports.append(report.record)
    barrier()
    return TrainResult(run.output_dir, cfg.train.epochs, last_epoch, reports, exported)
