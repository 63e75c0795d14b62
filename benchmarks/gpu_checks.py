"""GPU checks: the gpu-marked tests, then a short training per precision; writes one JSON file.

    python benchmarks/gpu_checks.py --out gpu-checks.json [--minutes 2] [KEY=VALUE ...]
    python benchmarks/gpu_checks.py --out dry-run.json --dry-run      # tiny config, any device

1. Tests: ``pytest -m gpu`` in a subprocess (the tests that need CUDA: float32 head under
   autocast, no host sync in a bf16 step or in top-k counting, TF32 vs IEEE, video
   segmentation and batched crops on the device vs the CPU); the outcome of each test.
2. Training: for each precision (fp32, bf16, fp16) a fresh ViT-S/16 (preset
   ``vit-small-imagenet``: 2x224 + 8x96 crops, K = 65,536, batch 64 per GPU; KEY=VALUE
   overrides apply) trains for ``--minutes`` of wall time from the same initial weights on the
   same synthetic crops: a fixed pool of smooth random 256-px images (made on the CPU from a
   seed) held on the GPU, cut into the recipe's views by the package's batched crop path and
   augmented by its device photometric step, one generator per step, so every precision sees
   the same crops at the same step. The schedules are the preset's, with ``--steps-per-epoch``
   iterations per epoch. Per precision: the loss of every step, images/s over the steps after
   ``--warmup`` (crops + Distiller.step, timed between two synchronisations), peak CUDA memory
   (allocated and reserved) and the float32 matmul mode; then the bf16 and fp16 loss curves
   against fp32's over their common steps.

Without CUDA (and without ``--dry-run``) the file says why nothing was measured, and the exit
status is 0. ``--dry-run`` runs everything with a tiny network on 32-px crops for 3 steps per
precision on whatever device there is (fp16 only on CUDA): a check of the script, not a
measurement. The exit status is 1 when a test failed or a training produced a
non-finite loss, else 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from dinossl.config import Config, load_config
from dinossl.data import to_model_input
from dinossl.data.batched_crops import BatchedMultiCrops, batch_generator
from dinossl.data.crop_recipe import CropRecipe
from dinossl.objective import build_schedules
from dinossl.runtime.cuda_settings import fp32_arithmetic
from dinossl.runtime.distributed import DistContext
from dinossl.runtime.precision import resolve_precision
from dinossl.runtime.process_settings import apply_process_settings
from dinossl.train.distiller import build_distiller

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, peak_memory, reset_peak_memory, synchronize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "dinossl-gpu-checks/1"
PRECISIONS = ("fp32", "bf16", "fp16")
FULL_PRESET = "vit-small-imagenet"
DRY_RUN_PRESET = "vit-tiny-cifar"
DRY_RUN_OVERRIDES = ["model.depth=2", "model.out_dim=256", "model.head_hidden_dim=128",
                     "model.head_bottleneck_dim=64", "data.crops.num_local=2", "train.batch_size_per_process=8"]


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def run_gpu_tests(timeout_s: int) -> dict[str, Any]:
    """``pytest -m gpu`` on this checkout in a subprocess; counts and per-test outcomes."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO),
                                                           os.environ.get("PYTHONPATH", "")]))
        command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                   f"--junitxml={report}", "tests"]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"command": " ".join(command[1:]), "timed_out": f"did not finish within {timeout_s} s"}
        seconds = time.perf_counter() - started
        cases = _junit_cases(report) if report.is_file() else []
    counts = {outcome: sum(case["outcome"] == outcome for case in cases)
              for outcome in ("passed", "failed", "error", "skipped")}
    return {"command": "python " + " ".join(command[1:-2] + ["tests"]), "exit_status": done.returncode,
            "seconds": round(seconds, 1), **counts, "cases": cases,
            "output_tail": done.stdout[-3000:] + done.stderr[-2000:]}


def _junit_cases(path: Path) -> list[dict[str, str]]:
    cases = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome, message = tag if tag != "failure" else "failed", (child.get("message") or "")[:500]
                break
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome, "message": message})
    return cases


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def synthetic_images(count: int, size: int, seed: int, device: torch.device) -> torch.Tensor:
    """(count, 3, size, size) uint8 smooth random images on ``device``: two octaves of
    bicubically enlarged noise (8 and 32 cells across), made on the CPU from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, count, 64):
        n = min(64, count - start)
        image = torch.zeros(n, 3, size, size)
        for cells, weight in ((8, 1.0), (32, 0.35)):
            noise = torch.rand(n, 3, cells, cells, generator=generator)
            image += weight * F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
        low, high = image.amin(dim=(1, 2, 3), keepdim=True), image.amax(dim=(1, 2, 3), keepdim=True)
        chunks.append(((image - low) / (high - low) * 255).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(chunks).to(device)


class SyntheticCrops:
    """The recipe's views (global first) of ``batch`` pool images per step, cut on the pool's
    device; step ``s`` always gives the same crops (generator from (seed, 0, s))."""

    def __init__(self, pool: torch.Tensor, config: Config, seed: int) -> None:
        self.pool, self.seed = pool, seed
        self.batch = config.train.batch_size_per_process
        self.multicrop = BatchedMultiCrops(CropRecipe.from_config(config.data.crops))

    def __call__(self, step: int) -> list[torch.Tensor]:
        generator = batch_generator(self.seed, 0, step)
        rows = torch.randperm(len(self.pool), generator=generator)[:self.batch].to(self.pool.device)
        views = self.multicrop(self.pool.index_select(0, rows), generator)
        return [to_model_input(view, self.pool.device) for view in views]


def train_for(config: Config, precision: str, device: torch.device, crops: SyntheticCrops, seconds: float,
              warmup: int, steps_per_epoch: int) -> dict[str, Any]:
    """Train a fresh network at ``precision`` for ``seconds`` of wall time but at least
    ``warmup`` + 1 steps (and at most to the end of its schedules); the per-step losses,
    throughput after ``warmup`` steps and peak memory."""
    config = replace(config, train=replace(config.train, precision=precision))
    amp_dtype = resolve_precision(precision, device)
    apply_process_settings(config.train, device)  # as build_run: TF32 for fp32 runs only, host allocator, threads
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reset_peak_memory(device)
    ctx = DistContext(0, 1, 0, device)
    distiller = build_distiller(config, ctx, crops.multicrop.recipe.num_global)
    schedules = build_schedules(config.optim, config.loss, config.train.epochs, steps_per_epoch, crops.batch)
    max_steps = config.train.epochs * steps_per_epoch
    losses: list[torch.Tensor] = []
    timed_from: Optional[float] = None
    started = time.perf_counter()
    step = 0
    while step < max_steps and (step <= warmup or time.perf_counter() - started < seconds):
        if step == warmup:
            synchronize(device)
            timed_from = time.perf_counter()
        loss, _ = distiller.step(crops(step), schedules.at(step))
        losses.append(loss)
        step += 1
    synchronize(device)
    ended = time.perf_counter()
    curve = torch.stack(losses).float().cpu().tolist() if losses else []
    timed_steps = step - warmup if timed_from is not None else 0
    result: dict[str, Any] = {
        "autocast": "none" if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
        "grad_scaler": distiller.scaler.is_enabled(),
        "fp32_matmuls": fp32_arithmetic(config.train.tf32 and amp_dtype is None) if device.type == "cuda" else "ieee",
        "steps": step, "stopped_by": "schedule end" if step >= max_steps else "time",
        "wall_s": round(ended - started, 2), "timed_steps": timed_steps,
        "images_per_s": (timed_steps * crops.batch / (ended - timed_from)) if timed_steps > 0 else None,
        "nonfinite_steps": sum(not math.isfinite(value) for value in curve),
        "loss": curve,
    }
    if device.type == "cuda":
        memory = peak_memory(device)
        result["peak_allocated_mb"], result["peak_reserved_mb"] = memory["peak_memory_mb"], memory["peak_reserved_mb"]
    del distiller
    return result


def compare_curves(reference: list[float], other: list[float]) -> dict[str, Any]:
    """Loss differences over the common steps, and the means of the last 10% of them."""
    n = min(len(reference), len(other))
    if n == 0:
        return {"common_steps": 0}
    a, b = np.asarray(reference[:n]), np.asarray(other[:n])
    tail = max(1, n // 10)
    return {"common_steps": n, "max_abs_diff": float(np.max(np.abs(a - b))),
            "mean_abs_diff": float(np.mean(np.abs(a - b))),
            "last_tenth_mean_fp32": float(a[-tail:].mean()), "last_tenth_mean": float(b[-tail:].mean())}


def run_trainings(config: Config, device: torch.device, precisions: list[str], seconds: float, warmup: int,
                  steps_per_epoch: int, pool_size: int, image_size: int) -> dict[str, Any]:
    pool = synthetic_images(pool_size, image_size, config.train.seed, device)
    crops = SyntheticCrops(pool, config, config.train.seed)
    runs: dict[str, Any] = {}
    for precision in precisions:
        if precision == "fp16" and device.type != "cuda":
            runs[precision] = {"skipped": "fp16 autocast with a gradient scaler needs a CUDA device"}
            continue
        try:
            runs[precision] = train_for(config, precision, device, crops, seconds, warmup, steps_per_epoch)
        except torch.OutOfMemoryError as exc:
            runs[precision] = {"error": f"out of memory at batch {crops.batch}: {str(exc).splitlines()[0]}"}
            torch.cuda.empty_cache()
        print(f"{precision}: {_summary(runs[precision])}", flush=True)
    comparison = {p: compare_curves(runs["fp32"]["loss"], runs[p]["loss"]) for p in precisions
                  if p != "fp32" and "loss" in runs.get(p, {}) and "loss" in runs.get("fp32", {})}
    return {"runs": runs, "vs_fp32": comparison}


def _summary(run: dict[str, Any]) -> str:
    if "loss" not in run:
        return run.get("skipped") or run.get("error", "?")
    last = run["loss"][-1] if run["loss"] else float("nan")
    ips = run["images_per_s"]
    memory = f", peak {run['peak_allocated_mb']:.0f} MB" if "peak_allocated_mb" in run else ""
    return (f"{run['steps']} steps, last loss {last:.4f}, "
            f"{'n/a' if ips is None else f'{ips:.1f}'} images/s{memory}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="configuration overrides")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--minutes", type=float, default=2.0, help="training wall time per precision")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated, fp32 first")
    parser.add_argument("--warmup", type=int, default=10, help="steps before images/s is timed")
    parser.add_argument("--steps-per-epoch", type=int, default=50, help="iterations per epoch of the schedules")
    parser.add_argument("--pool", type=int, default=512, help="synthetic images in the pool")
    parser.add_argument("--tests-timeout", type=int, default=300, help="seconds for the gpu-marked tests")
    parser.add_argument("--no-tests", action="store_true", help="skip the gpu-marked tests")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny network on 32-px crops, 3 steps per precision, on any device")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or precisions[0] != "fp32" or any(p not in PRECISIONS for p in precisions):
        parser.error(f"--precisions must start with fp32 and name only {', '.join(PRECISIONS)}")

    record: dict[str, Any] = {"schema": SCHEMA, "command": " ".join(["python", "benchmarks/gpu_checks.py",
                                                                      *(argv if argv is not None else sys.argv[1:])]),
                              "dry_run": args.dry_run}
    if not torch.cuda.is_available() and not args.dry_run:
        record["skipped"] = "no CUDA device visible to torch; nothing measured (--dry-run checks the script on the CPU)"
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(record["skipped"])
        return 0
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    record["device"] = describe(device)
    if not args.no_tests:
        record["tests"] = run_gpu_tests(args.tests_timeout)
        tests = record["tests"]
        print(f"gpu tests: {tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed, "
              f"{tests.get('error', 0)} errors, {tests.get('skipped', 0)} skipped", flush=True)

    preset = DRY_RUN_PRESET if args.dry_run else FULL_PRESET
    overrides = (DRY_RUN_OVERRIDES if args.dry_run else []) + args.overrides + [
        "train.progress_bar=false", f"train.device={device}"]
    config = load_config(preset, overrides=overrides)
    seconds = 0.0 if args.dry_run else args.minutes * 60  # dry run: the warm-up steps and one timed step
    warmup = min(args.warmup, 2) if args.dry_run else args.warmup
    image_size = 40 if args.dry_run else 256
    record["training"] = {
        "preset": preset, "overrides": overrides, "arch": config.model.arch, "patch_size": config.model.patch_size,
        "crops": f"2x{config.data.crops.global_size}+{config.data.crops.num_local}x{config.data.crops.local_size}",
        "batch": config.train.batch_size_per_process, "out_dim": config.model.out_dim,
        "seconds_per_precision": seconds, "warmup_steps": warmup, "steps_per_epoch": args.steps_per_epoch,
        "synthetic_images": {"count": args.pool, "size": image_size, "seed": config.train.seed},
        **run_trainings(config, device, precisions, seconds, warmup, args.steps_per_epoch, args.pool,
                        image_size),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {args.out}")
    failed = record.get("tests", {}).get("failed", 0) + record.get("tests", {}).get("error", 0)
    nonfinite = sum(run.get("nonfinite_steps", 0) for run in record["training"]["runs"].values())
    return 1 if failed or nonfinite or "timed_out" in record.get("tests", {}) else 0


if __name__ == "__main__":
    sys.exit(main())
