"""Running a study: each variant trained in its own run folder under the study folder, then the
report (study.md, study.json) and the figure (study.png).

The study folder holds ``study.yaml`` (every variant's resolved configuration), one run folder
per variant and the report. Running the same study again resumes: finished variants are
skipped, an interrupted one resumes from its last checkpoint (as ``dino train`` does), a folder
of another study (a variant added, removed or configured otherwise) is refused.

Under torchrun, every variant is trained by all processes together (DDP), one after another;
with ``parallel`` each process trains its share of the variants alone (variant i goes to
process i mod N), and whichever process finishes last writes the report.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml

from dinossl.config import Config
from dinossl.errors import DinoError
from dinossl.eval.training_monitors import training_monitors
from dinossl.outputs import LOCK_NAME, check_writable
from dinossl.runtime.device import resolve_device
from dinossl.runtime.distributed import barrier, init_distributed, launched_by_torchrun, shutdown_distributed
from dinossl.safe_files import write_atomic
from dinossl.study.definition import Study, Variant
from dinossl.study.figure import FIGURE_NAME, write_figure
from dinossl.study.memory import PeakMemory
from dinossl.study.report import write_report
from dinossl.study.results import VariantResult, read_variant
from dinossl.train import RunMonitor, train
from dinossl.train.run_folder import differing_fields

log = logging.getLogger("dinossl")

STUDY_FILE = "study.yaml"
FINISHED_FILE = "finished.json"  # in a variant's run folder once its training (and k-NN) ended


@dataclass(frozen=True)
class StudyOutcome:
    """What :func:`run_study` did in this process."""

    folder: Path
    trained: list[str]  # variants this process trained (or resumed) now
    skipped: list[str]  # variants this process found finished
    written: list[Path]  # study.md, study.json, study.png when this process wrote them
    preempted_by: int = 0  # SIGTERM/SIGUSR1 stopped a variant (checkpointed; the same command resumes it)


def study_record(study: Study, configs: Sequence[tuple[Variant, Config]]) -> dict[str, Any]:
    """What ``study.yaml`` holds: the study's name and each variant's overrides and configuration."""
    return {"study": study.name,
            "variants": [{"name": v.name, "overrides": list(v.overrides), "config": c.to_dict()} for v, c in configs]}


def _stored_record(folder: Path) -> Optional[dict[str, Any]]:
    path = folder / STUDY_FILE
    if not path.is_file():
        return None
    try:
        stored = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DinoError(f"{path} is not valid YAML ({exc}); not touching that folder") from exc
    if not isinstance(stored, dict) or not isinstance(stored.get("variants"), list):
        raise DinoError(f"{path} is not a study file of dino study; choose another output folder")
    return stored


def check_study_folder(folder: Path, record: dict[str, Any]) -> None:
    """Refuse a folder that is neither new, empty, nor a folder of this same study (naming what
    differs); the variants' own run folders are checked again by the trainer."""
    if folder.exists() and not folder.is_dir():
        raise DinoError(f"output {folder} exists and is not a folder")
    check_writable(folder)
    if not folder.is_dir() or not any(p.name != LOCK_NAME for p in folder.iterdir()):
        return
    stored = _stored_record(folder)
    if stored is None:
        raise DinoError(f"output folder {folder} is not empty and holds no {STUDY_FILE}: choose a new folder "
                        "(a study folder is resumed, anything else is left alone)")
    stored_names = [str(v.get("name")) for v in stored["variants"]]
    names = [v["name"] for v in record["variants"]]
    if stored_names != names:
        raise DinoError(f"output folder {folder} holds study {stored.get('study')!r} with variants "
                        f"{', '.join(stored_names)}; this study has {', '.join(names)}: choose another output folder")
    for old, new in zip(stored["variants"], record["variants"]):
        changed = differing_fields(old.get("config") or {}, new["config"])
        if changed:
            raise DinoError(f"output folder {folder} holds another study: variant {new['name']} differs in "
                            f"{', '.join(changed[:6])}; choose another output folder")


def _write_study_file(folder: Path, record: dict[str, Any]) -> None:
    write_atomic(folder / STUDY_FILE, lambda tmp: Path(tmp).write_text(yaml.safe_dump(record, sort_keys=False)))


def _wait_for_study_file(folder: Path, record: dict[str, Any], timeout_s: float) -> None:
    """Processes other than 0 of a parallel study: wait until process 0 has checked the folder and
    written study.yaml, then check it is this study."""
    deadline = time.monotonic() + timeout_s
    while not (folder / STUDY_FILE).is_file():
        if time.monotonic() > deadline:
            raise DinoError(f"process 0 did not set up {folder / STUDY_FILE} within {timeout_s:.0f} s "
                            "(see its error); nothing was trained here")
        time.sleep(0.5)
    check_study_folder(folder, record)


def is_finished(folder: Path, name: str) -> bool:
    path = folder / FINISHED_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("variant") == name
    except (json.JSONDecodeError, AttributeError):
        return False


def _mark_finished(folder: Path, variant: Variant) -> None:
    text = json.dumps({"variant": variant.name, "overrides": list(variant.overrides)}) + "\n"
    write_atomic(folder / FINISHED_FILE, lambda tmp: Path(tmp).write_text(text))


def _described(variant: Variant) -> str:
    return f"{variant.name} ({variant.label})" if variant.overrides else variant.name


def _monitors(config: Config, local_rank: int, run_folder: Path) -> list[RunMonitor]:
    """The config's monitors (:func:`~dinossl.eval.training_monitors.training_monitors`) between
    a peak-memory read and its reset, so the peak counts training only."""
    memory = PeakMemory(resolve_device(config.train.device, local_rank))
    read, reset = memory.monitors()
    return [read, *training_monitors(config, run_folder), reset]


def machine_description(device: torch.device, processes: int) -> str:
    """E.g. "2-core x86_64 CPU, no GPU" or "NVIDIA H100 80GB HBM3 GPU" (plus the process count)."""
    if device.type == "cuda":
        text = f"{torch.cuda.get_device_name(device)} GPU"
    else:
        text = f"{os.cpu_count()}-core {platform.machine()} CPU" + ("" if torch.cuda.is_available() else ", no GPU")
    return text + (f"; {processes} processes" if processes > 1 else "")


def read_results(folder: Path, configs: Sequence[tuple[Variant, Config]]) -> list[VariantResult]:
    return [read_variant(folder / v.name, v.name, list(v.overrides), c.model.out_dim) for v, c in configs]


def write_outputs(folder: Path, study: Study, configs: Sequence[tuple[Variant, Config]], command: str,
                  machine: str, figure: bool = True) -> list[Path]:
    """study.md, study.json and (with ``figure``) study.png from the variants' run folders."""
    results = read_results(folder, configs)
    written = write_report(folder, study, results, command, machine)
    if figure:
        written.append(write_figure(folder / FIGURE_NAME, f"dino study {study.name}", results))
    return written


def run_study(study: Study, configs: Sequence[tuple[Variant, Config]], folder: str | Path, command: str,
              parallel: bool = False, figure: bool = True) -> StudyOutcome:
    """Train the variants that are not finished (resuming interrupted ones), then write the report."""
    folder = Path(folder)
    record = study_record(study, configs)
    base = configs[0][1].train
    if parallel and launched_by_torchrun():
        return _run_parallel(study, configs, folder, record, command, figure, base.dist_timeout_s)
    ctx = init_distributed(base.device, base.dist_timeout_s)
    try:
        check_study_folder(folder, record)  # every process sees the folder as it was before any write
        barrier()
        if ctx.is_main:
            _write_study_file(folder, record)
        barrier()
        trained, skipped = [], []
        for index, (variant, config) in enumerate(configs, start=1):
            run_folder = folder / variant.name
            if is_finished(run_folder, variant.name):
                skipped.append(variant.name)
                continue
            log.info("study %s: variant %d/%d %s", study.name, index, len(configs), _described(variant))
            result = train(config, run_folder, monitors=_monitors(config, ctx.local_rank, run_folder) if ctx.is_main else ())
            if result.preempted_by:  # the variant is checkpointed, not finished
                return StudyOutcome(folder, trained, skipped, [], preempted_by=result.preempted_by)
            if ctx.is_main:
                _mark_finished(run_folder, variant)
            barrier()
            trained.append(variant.name)
        written: list[Path] = []
        if ctx.is_main:
            machine = machine_description(ctx.device, ctx.world_size)
            written = write_outputs(folder, study, configs, command, machine, figure)
        barrier()
    finally:
        if ctx.owns_process_group:
            shutdown_distributed()
    return StudyOutcome(folder, trained, skipped, written)


def _run_parallel(study: Study, configs: Sequence[tuple[Variant, Config]], folder: Path, record: dict[str, Any],
                  command: str, figure: bool, timeout_s: float) -> StudyOutcome:
    """Each process trains variants rank, rank + N, ... alone; the last one to finish reports."""
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if rank == 0:
        check_study_folder(folder, record)
        _write_study_file(folder, record)
    else:
        _wait_for_study_file(folder, record, timeout_s)
    trained, skipped = [], []
    for index in range(rank, len(configs), world_size):
        variant, config = configs[index]
        run_folder = folder / variant.name
        if is_finished(run_folder, variant.name):
            skipped.append(variant.name)
            continue
        log.warning("study %s: process %d trains variant %d/%d %s", study.name, rank, index + 1, len(configs),
                    _described(variant))
        result = train(config, run_folder, monitors=_monitors(config, local_rank, run_folder), alone=True)
        if result.preempted_by:
            return StudyOutcome(folder, trained, skipped, [], preempted_by=result.preempted_by)
        _mark_finished(run_folder, variant)
        trained.append(variant.name)
    written: list[Path] = []
    waiting = [v.name for v, _ in configs if not is_finished(folder / v.name, v.name)]
    if not waiting:
        device = resolve_device(configs[0][1].train.device, local_rank)
        machine = machine_description(device, 1) + f"; {world_size} processes, one variant each at a time"
        written = write_outputs(folder, study, configs, command, machine, figure)
    else:
        log.warning("study %s: process %d is done; %s still training elsewhere (the last process to finish "
                    "writes the report)", study.name, rank, ", ".join(waiting))
    return StudyOutcome(folder, trained, skipped, written)
