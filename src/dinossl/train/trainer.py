"""The DINO training loop: crops -> distiller step -> statistics, checkpoints and monitors.

One function, :func:`train`, runs a whole run (or resumes it) in a single process or under
torchrun. The loop itself is :func:`train_one_epoch`; everything it needs is built once in
:func:`build_run`. What looks at the networks during training (e.g. a k-NN check) is handed in
as :class:`RunMonitor` objects, so this layer needs nothing from the evaluations.

Checkpoints are written after every epoch, every ``train.checkpoint_every_steps`` steps and
when SIGTERM or SIGUSR1 arrives (:mod:`~dinossl.train.preemption`: the step in flight is
finished, checkpointed, and the run ends with status 128 + the signal's number). A run resumed
from a checkpoint written inside an epoch continues at the next step, bit for bit as the
uninterrupted run (same number of processes): the sampler skips the steps done, and the step
RNG, the epoch's running statistics, the collapse counters and the log position come from
the checkpoint.
"""

from __future__ import annotations

import logging
import re
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
from dinossl.data.fingerprint import DataFingerprint, fingerprint_images
from dinossl.data.training_data import TrainingData, build_training_data
from dinossl.errors import CheckpointError, DataError, LoaderFailure
from dinossl.outputs import check_writable
from dinossl.objective import CollapseMonitor, TrainingSchedules, build_schedules, scaled_lr
from dinossl.runtime.distributed import (
    DistContext,
    PeerFailure,
    all_reduce,
    barrier,
    gather_objects,
    init_distributed,
    is_peer_failure,
    local_context,
    raise_together,
    shutdown_distributed,
)
from dinossl.runtime.folder_lock import folder_lock
from dinossl.runtime.process_settings import apply_process_settings
from dinossl.train.checkpoint import (
    CHECKPOINT_NAME,
    KEPT_CHECKPOINT,
    export_teacher_backbone,
    read_checkpoint,
    remove_interrupted_writes,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from dinossl.train.distiller import Distiller, build_distiller
from dinossl.train.preemption import PreemptionSignals, signal_name
from dinossl.train.experiment_loggers import check_tracker, open_tracker
from dinossl.train.run_folder import check_run_folder, write_run_config
from dinossl.train.run_log import RunLog, epoch_start_position, rewind_log
from dinossl.train.step_stats import StepStats

log = logging.getLogger("dinossl")


@dataclass(frozen=True)
class MonitorReport:
    """What a monitor found: a record for ``log.jsonl`` (with its ``kind``), an optional console
    line, and pictures ((H, W, 3) uint8 by name) for TensorBoard and the tracker."""

    record: dict[str, Any]
    message: Optional[str] = None
    pictures: dict[str, Any] = field(default_factory=dict)


class RunMonitor(Protocol):
    """Looks at the networks during training; called on the main process only."""

    def after_epoch(self, epoch: int, distiller: Distiller) -> Optional[MonitorReport]:
        """After epoch ``epoch`` (1-based) was checkpointed."""

    def after_training(self, distiller: Distiller) -> Optional[MonitorReport]:
        """After the last epoch and the export."""


@dataclass(frozen=True)
class SavedPoint:
    """Where the run's checkpoint.pth stands: epochs completed, global step, steps into the next epoch."""

    path: Path
    epochs_done: int
    step: int
    epoch_step: int = 0

    @classmethod
    def of(cls, path: Path, checkpoint: dict[str, Any]) -> "SavedPoint":
        return cls(path, int(checkpoint["epoch"]), int(checkpoint.get("step", 0)), int(checkpoint.get("epoch_step", 0)))

    def describe(self) -> str:
        """e.g. 'run/checkpoint.pth holds step 6 (epoch 2, 2 of its steps done)'."""
        if self.epoch_step:
            return (f"{self.path} holds step {self.step} (epoch {self.epochs_done + 1}, {self.epoch_step} of its steps "
                    "done)")
        return f"{self.path} holds step {self.step} (end of epoch {self.epochs_done})"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``where`` says which checkpoint holds the work."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


class DataChanged(DataError):
    """The training set differs from the one the checkpoint was trained on."""

    same_on_all_ranks = True


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
    start_step: int = 0  # steps of epoch start_epoch already done (a checkpoint written inside it)
    resume_point: Optional[dict[str, Any]] = None  # that checkpoint's ``mid_epoch`` entry
    signals: PreemptionSignals = field(default_factory=PreemptionSignals)
    fingerprint: Optional[DataFingerprint] = None  # of the training set, recorded in every checkpoint
    saved: Optional["SavedPoint"] = None  # the checkpoint.pth in place (main process)
    writing: bool = False  # inside a write of checkpoint.pth

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
    preempted_by: int = 0  # the signal (SIGTERM, SIGUSR1) that stopped the run, 0 if none
    steps_done: int = 0  # global steps done when the run stopped on a signal


class _Stopped(Exception):
    """A preemption signal was honoured inside an epoch (the checkpoint is written)."""

    def __init__(self, signum: int, steps_done: int) -> None:
        super().__init__(signum, steps_done)
        self.signum, self.steps_done = signum, steps_done


def _seed_for_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed the step RNG (drop-path) from (seed, epoch, rank): resuming at an epoch boundary
    then draws exactly what an uninterrupted run draws, whatever the process count before."""
    torch.manual_seed(seed * 1_000_003 + epoch * 1009 + rank)


def build_run(config: Config, output_dir: str | Path, init_from: Optional[str] = None,
              ctx: Optional[DistContext] = None, allow_data_change: bool = False) -> TrainingRun:
    """Data, distiller and schedules; resumes from ``output_dir`` when it holds a checkpoint of
    the same configuration and of the same data (``allow_data_change``: of other data too, the
    unfinished epoch then restarts). ``ctx``: the process group already joined (None: join it here)."""
    output_dir = check_writable(output_dir)  # before any image is decoded
    if ctx is None:
        ctx = init_distributed(config.train.device, config.train.dist_timeout_s)
    apply_process_settings(config.train, ctx.device)
    checkpoint = check_run_folder(output_dir, config)
    resuming = checkpoint is not None or (output_dir / "config.yaml").is_file()
    check_tracker(config.train.logger)  # a missing tracker package stops the run before anything is written

    recipe = CropRecipe.from_config(config.data.crops)
    tcfg = config.train
    data = build_training_data(config.data, recipe, tcfg.batch_size_per_process, ctx.rank, ctx.world_size,
                               tcfg.seed, ctx.device)
    fingerprint = fingerprint_images(data.listing)  # every process: all of them must agree to stop
    data_note, restart_epoch = (None, False) if checkpoint is None else _data_since(
        checkpoint, fingerprint, output_dir / CHECKPOINT_NAME, allow_data_change)
    if ctx.is_main and resuming:
        remove_interrupted_writes(output_dir)
        # the steps after the checkpoint are computed again: their records go (and those of the
        # whole unfinished epoch when it restarts)
        position = checkpoint.get("log_position") if checkpoint is not None else 0
        if restart_epoch:
            position = epoch_start_position(output_dir, int(checkpoint["epoch"]) + 1, position)
        rewind_log(output_dir, position)
    if init_from is not None and checkpoint is not None and ctx.is_main:
        log.warning("--init-from %s ignored: %s holds a checkpoint, which is resumed", init_from, output_dir)
    distiller = build_distiller(config, ctx, recipe.num_global, init_from if checkpoint is None else None)
    global_batch = tcfg.batch_size_per_process * ctx.world_size
    schedules = build_schedules(config.optim, config.loss, tcfg.epochs, data.steps_per_epoch, global_batch)

    purge_step = None
    if checkpoint is not None:
        purge_step = (int(checkpoint["epoch"]) * data.steps_per_epoch if restart_epoch
                      else int(checkpoint.get("step", 0))) + 1
    run = TrainingRun(
        config=config, ctx=ctx, output_dir=output_dir, recipe=recipe, data=data, distiller=distiller,
        schedules=schedules, run_log=_run_log(config, output_dir, ctx, purge_step=purge_step),
        collapse=CollapseMonitor(out_dim=config.model.out_dim), fingerprint=fingerprint,
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
        if data_note is not None:
            run.run_log.warn(data_note)
        _resume(run, checkpoint)
        if restart_epoch:
            run.start_step, run.resume_point = 0, None
        if ctx.is_main:
            run.saved = SavedPoint.of(output_dir / CHECKPOINT_NAME, checkpoint)
    elif ctx.is_main:
        write_run_config(output_dir, config)
    return run


def _data_since(checkpoint: dict[str, Any], fingerprint: DataFingerprint, path: Path,
                allow_change: bool) -> tuple[Optional[str], bool]:
    """Compare the training set with the one ``checkpoint`` recorded: (a warning or None, whether
    the unfinished epoch restarts). Raises DataChanged when it differs and ``allow_change`` is off."""
    stored = DataFingerprint.from_record(checkpoint.get("data"))
    if stored is None:
        return (f"{path} records no fingerprint of its training data (written by an older dinossl): whether the "
                "data changed since cannot be checked", False)
    if stored.sha256 == fingerprint.sha256:
        return None, False
    change = fingerprint.describe_change(stored)
    if not allow_change:
        raise DataChanged(f"the training data changed since {path} was written: {change}; the sampler's order and "
                          "the position it resumes at would no longer mean what they did. Restore the data, train "
                          "into a new output folder, or pass --allow-data-change to continue on the new data (the "
                          "unfinished epoch restarts in a new order)")
    epoch = int(checkpoint["epoch"]) + 1
    how = "starts again from its first step" if checkpoint.get("epoch_step") else "runs"
    return (f"the training data changed since {path} was written: {change}; continuing on the new data "
            f"(--allow-data-change): epoch {epoch} {how} in the new data's order", True)


def _run_log(config: Config, output_dir: Path, ctx: DistContext, purge_step: Optional[int] = None) -> RunLog:
    """The run's log, mirrored to the tracker ``train.logger`` names (main process only);
    ``purge_step``: TensorBoard hides the resumed steps' earlier events from there on."""
    tracker = None
    if ctx.is_main:
        tracker = open_tracker(config.train.logger, config.train.logger_project, output_dir, config.to_dict())
        if tracker is None:
            log.info("W&B / MLflow logging is off: pip install 'dinossl[wandb]' (or [mlflow]) and set "
                     "train.logger=wandb (or mlflow)")
    return RunLog(output_dir, enabled=ctx.is_main, purge_step=purge_step, tracker=tracker)


def _resume(run: TrainingRun, checkpoint: dict[str, Any]) -> None:
    """Continue after the checkpoint's step, saying so when the global batch changed."""
    run.start_epoch = restore_training_state(run.distiller, checkpoint, run.output_dir / CHECKPOINT_NAME)
    saved_world = int(checkpoint.get("world_size", run.ctx.world_size))
    saved_batch = int(checkpoint.get("global_batch", run.global_batch))
    epoch_step = int(checkpoint.get("epoch_step", 0))
    if epoch_step and saved_batch == run.global_batch:
        run.start_step, run.resume_point = epoch_step, checkpoint.get("mid_epoch") or {}
    elif epoch_step:  # continue after the images already seen this epoch, in whole new batches
        run.start_step = min(epoch_step * saved_batch // run.global_batch, run.steps_per_epoch - 1)
    if saved_batch != run.global_batch and run.ctx.is_main:
        inside = (f"; inside epoch {run.start_epoch + 1} it continues at step {run.start_step + 1} and its "
                  "statistics count the steps after the resume only" if epoch_step else "")
        run.run_log.warn(
            f"resuming with global batch {run.global_batch} ({run.ctx.world_size} processes) instead of "
            f"{saved_batch} ({saved_world} processes): the lr is rescaled to the new batch and the "
            f"per-iteration schedules continue from the same fraction of training (epoch {run.start_epoch}){inside}"
        )
    log.info("resumed from %s at epoch %d, step %d", run.output_dir / CHECKPOINT_NAME, run.start_epoch + 1,
             run.start_step + 1)


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The step RNG (drop path) of this process: the CPU generator, and the GPU's when training there."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _continue_epoch(run: TrainingRun, stats_sums: StepStats) -> int:
    """Restore what the unfinished epoch of a mid-epoch checkpoint had: this process's step RNG
    and running statistics, the collapse counters; returns the images skipped so far. With
    another number of processes, rank 0 takes the processes' summed statistics and the RNG
    stays seeded by (seed, epoch, rank)."""
    point, ctx = run.resume_point or {}, run.ctx
    ranks = point.get("ranks") or []
    if "collapse" in point:
        run.collapse.load_state_dict(point["collapse"])
    if len(ranks) == ctx.world_size:
        mine = ranks[ctx.rank]
        _set_rng_state(mine["rng"], ctx.device)
        stats_sums.load_state_dict(mine["step_stats"])
        return int(mine["skipped_images"])
    if ranks and ctx.is_main:
        total = {key: sum(r["step_stats"][key] for r in ranks) for key in ("interval", "epoch")}
        stats_sums.load_state_dict({**total, "first_bad_step": torch.tensor(-1)})
        return sum(int(r["skipped_images"]) for r in ranks)
    return 0


def _checkpoint_kept(run: TrainingRun) -> str:
    """What a failed run leaves (for the non-finite loss message)."""
    if (run.output_dir / CHECKPOINT_NAME).is_file():
        return f"the last good checkpoint in {run.output_dir} is untouched"
    return f"no checkpoint had been written in {run.output_dir} yet"


def _data_record(run: TrainingRun) -> Optional[dict[str, Any]]:
    return run.fingerprint.record() if run.fingerprint is not None else None


def _save(run: TrainingRun, state: dict[str, Any]) -> None:
    """Write checkpoint.pth and remember what it holds (``writing`` stays set if the write fails)."""
    path = run.output_dir / CHECKPOINT_NAME
    run.writing = True
    save_checkpoint(state, path)
    run.writing = False
    run.saved = SavedPoint.of(path, state)


def _where_the_work_is(run: Optional[TrainingRun], output_dir: str | Path) -> str:
    """Which checkpoint holds the run, for a message after an interruption or a failure."""
    path = Path(output_dir) / CHECKPOINT_NAME
    if run is not None and not run.ctx.is_main:
        return "rank 0 says which checkpoint holds the run"
    saved = run.saved if run is not None else None
    if run is None or run.writing:  # interrupted while starting, or inside a write: ask the file
        try:
            saved = SavedPoint.of(path, read_checkpoint(path)) if path.is_file() else None
        except (CheckpointError, KeyError, ValueError):
            saved = None
    if saved is None:
        return f"no checkpoint was written in {output_dir} yet"
    return saved.describe()


def _save_inside_epoch(run: TrainingRun, epoch: int, steps_done: int, stats_sums: StepStats, skipped: int) -> None:
    """Checkpoint after ``steps_done`` steps of epoch ``epoch`` (0-based), with what the rest of
    the epoch needs from every process (a collective: all ranks call it at the same step)."""
    ctx = run.ctx
    stats_sums.check_finite(run.steps_per_epoch, _checkpoint_kept(run))  # never checkpoint a NaN state
    ranks = gather_objects({"rng": _rng_state(ctx.device), "step_stats": stats_sums.state_dict(),
                            "skipped_images": skipped})
    if ctx.is_main:
        state = training_state(run.distiller, run.config, epoch, run.steps_per_epoch, ctx.world_size,
                               run.global_batch, epoch_step=steps_done, log_position=run.run_log.position(),
                               mid_epoch={"ranks": ranks, "collapse": run.collapse.state_dict()},
                               data=_data_record(run))
        _save(run, state)
    barrier()


def train_one_epoch(run: TrainingRun, epoch: int, progress: tqdm) -> dict[str, float]:
    """One pass over this process's shard; returns the epoch's mean statistics."""
    cfg, ctx, device = run.config, run.ctx, run.ctx.device
    first = run.start_step if epoch == run.start_epoch else 0
    run.data.set_position(epoch, first)
    _seed_for_epoch(cfg.train.seed, epoch, ctx.rank)

    stats_sums = StepStats(device)
    skipped = _continue_epoch(run, stats_sums) if first else 0
    every = cfg.train.checkpoint_every_steps
    last_time, last_step = time.perf_counter(), epoch * run.steps_per_epoch + first
    for it, (crops, _, n_skipped) in enumerate(run.data.loader, start=first):
        step = epoch * run.steps_per_epoch + it
        skipped += n_skipped
        if not crops:
            raise DataError(f"every image of the batch at step {step + 1} was unreadable; check the data folder")
        crops = [to_model_input(c, device) for c in crops]  # data.photometric=device: augmented here
        values = run.schedules.at(step)
        loss, stats = run.distiller.step(crops, values)
        stats_sums.add(step, loss, stats)
        progress.update(1)

        logged = (step + 1) % cfg.train.log_every == 0 or it + 1 == run.steps_per_epoch
        if logged:
            means = stats_sums.read("interval", run.steps_per_epoch, _checkpoint_kept(run))
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

        if it + 1 < run.steps_per_epoch:  # the epoch's end is checkpointed by the caller
            due = every > 0 and (step + 1) % every == 0
            # processes agree on a signal where they synchronise anyway; one process checks every step
            signum = run.signals.agreed(device, ctx.distributed) if (due or logged or not ctx.distributed) else 0
            if due or signum:
                _save_inside_epoch(run, epoch, it + 1, stats_sums, skipped)
            if signum:
                raise _Stopped(signum, step + 1)

    run.distiller.end_epoch()  # the previous-epoch teacher is replaced here
    means = stats_sums.read("epoch", run.steps_per_epoch, _checkpoint_kept(run))
    skipped_total = int(all_reduce(torch.tensor([skipped], device=device, dtype=torch.float64), "sum").item())
    if skipped_total:
        run.run_log.warn(f"epoch {epoch + 1}: skipped {skipped_total} unreadable images", epoch=epoch + 1)
    return {"loss": means["loss"], "teacher_entropy": means["teacher_entropy"], "kl": means["kl"],
            "skipped_images": skipped_total, "images": run.steps_per_epoch * run.global_batch}


def train(
    config: Config, output_dir: str | Path, init_from: Optional[str] = None, stop_after_epochs: Optional[int] = None,
    monitors: Sequence[RunMonitor] = (), alone: bool = False, allow_data_change: bool = False,
) -> TrainResult:
    """Pretrain (or resume) a DINO run in ``output_dir``; exports the teacher backbone at the end.

    ``stop_after_epochs`` ends this invocation after that many more epochs (checkpoint written,
    no export), leaving a run that a later call resumes. ``monitors`` look at the networks after
    each epoch and after training (main process only); their records go to ``log.jsonl``.
    ``alone`` trains in this process only, even under torchrun (see :func:`build_run`).
    ``allow_data_change``: resume even if the training set changed since the checkpoint.

    The main process holds the run folder's lock (:mod:`dinossl.runtime.folder_lock`) from before
    it reads the folder until the run ends: a second run on the folder stops with FolderInUse.
    Ctrl-C raises :class:`RunInterrupted`, which says which checkpoint holds the work; a
    data-loading worker that dies ends the run with a LoaderFailure that says the same.
    """
    ctx = (local_context(config.train.device) if alone
           else init_distributed(config.train.device, config.train.dist_timeout_s))
    run: Optional[TrainingRun] = None
    try:
        with folder_lock(check_writable(output_dir), "dino train", ctx):
            try:
                run = build_run(config, output_dir, init_from, ctx, allow_data_change)
                with run.signals:
                    return _train(run, stop_after_epochs, monitors)
            finally:  # before the lock is released
                if run is not None:
                    run.run_log.close()
    except KeyboardInterrupt as exc:
        raise RunInterrupted(_where_the_work_is(run, output_dir)) from exc
    except (RuntimeError, dist.DistError) as exc:
        worker = _dead_loader_worker(exc)
        if worker is not None:
            raise LoaderFailure(f"data-loading {worker}; {_where_the_work_is(run, output_dir)}. Too little memory is "
                                "the usual cause (the kernel's out-of-memory killer): lower data.num_workers or "
                                "train.batch_size_per_process, then run the same command to resume") from exc
        if ctx.distributed and is_peer_failure(exc):
            raise PeerFailure(
                f"rank {ctx.rank}: lost contact with another process of the run "
                f"({str(exc).strip().splitlines()[0][:200]}); the last checkpoint in {output_dir} is untouched"
            ) from exc
        raise
    finally:  # every exit: success, stop, bad data, non-finite loss, lost peer, interrupt
        if ctx.owns_process_group:
            shutdown_distributed()


_WORKER_DIED = re.compile(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) "
                          r"(is killed by signal: [^.]*|exited unexpectedly)")


def _dead_loader_worker(exc: BaseException) -> Optional[str]:
    """'worker pid 123 is killed by signal: Killed' when ``exc`` is torch's report of a
    DataLoader worker that died; None otherwise."""
    found = _WORKER_DIED.search(str(exc))
    if found is None:
        return None
    return f"worker pid {found.group(1).strip()} {found.group(2).strip()}"


def _report(run: TrainingRun, report: Optional[MonitorReport], progress: Optional[tqdm] = None) -> None:
    if report is None:
        return
    run.run_log.write(report.record)
    for name, picture in report.pictures.items():
        run.run_log.image(name, picture, int(report.record.get("epoch", 0)))
    if report.message:
        (progress.write if progress is not None else log.info)(report.message)


def _preempted(run: TrainingRun, signum: int, epochs_done: int, steps_done: int) -> TrainResult:
    if run.ctx.is_main:
        log.info("stopped on %s after step %d: %s holds its checkpoint", signal_name(signum), steps_done,
                 run.output_dir)
    return TrainResult(run.output_dir, epochs_done, {}, [], [], preempted_by=signum, steps_done=steps_done)


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
    progress = tqdm(total=total_steps, initial=run.start_epoch * run.steps_per_epoch + run.start_step, unit="step",
                    disable=not (ctx.is_main and cfg.train.progress_bar), dynamic_ncols=True, desc="dino")
    try:
        for epoch in range(run.start_epoch, end_epoch):
            started = time.perf_counter()
            try:
                last_epoch = train_one_epoch(run, epoch, progress)
            except _Stopped as stop:
                return _preempted(run, stop.signum, epoch, stop.steps_done)
            last_epoch["seconds"] = time.perf_counter() - started
            if ctx.is_main:
                run.run_log.write({"kind": "epoch", "epoch": epoch + 1, **last_epoch,
                                   "teacher_temp": float(run.schedules.teacher_temp[epoch]),
                                   "center_norm": run.distiller.loss_fn.center.norm().item()})
                state = training_state(run.distiller, cfg, epoch + 1, run.steps_per_epoch, ctx.world_size,
                                       run.global_batch, log_position=run.run_log.position(), data=_data_record(run))
                _save(run, state)
                if cfg.train.keep_every and (epoch + 1) % cfg.train.keep_every == 0:
                    save_checkpoint(state, run.output_dir / KEPT_CHECKPOINT.format(epoch=epoch + 1))
                for monitor in monitors:
                    _report(run, monitor.after_epoch(epoch + 1, run.distiller), progress)
            barrier()
            signum = run.signals.agreed(ctx.device, ctx.distributed)
            if signum and epoch + 1 < cfg.train.epochs:
                return _preempted(run, signum, epoch + 1, (epoch + 1) * run.steps_per_epoch)
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
