"""Training throughput and peak memory of one DINO configuration; writes JSON.

The measured step is the trainer's own ``Distiller.step`` (teacher + student forward, loss,
backward, clipping, AdamW, EMA) on synthetic crops of the configured sizes, so data loading
is excluded. Images/s is the median over the timed steps (after warm-up steps) of
global batch / step time; memory is the peak CUDA allocation on GPU and the process's peak
resident set size on CPU.

    python benchmarks/train_throughput.py --preset vit-tiny-cifar --out bench-tiny.json
    python benchmarks/train_throughput.py --preset vit-small-imagenet train.batch_size_per_process=8 \\
        --steps 5 --warmup 2 --out bench-vits16.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, peak_memory, reset_peak_memory, synchronize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--preset", default="vit-tiny-cifar")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    from dinossl.config import load_config
    from dinossl.train import build_run

    config = load_config(args.preset, overrides=[*args.overrides, "train.progress_bar=false", "data.num_workers=0"])
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(config, Path(tmp) / "run")
        device, crops_cfg = run.ctx.device, config.data.crops
        batch = config.train.batch_size_per_process
        generator = torch.Generator().manual_seed(0)
        crops = [torch.randn(batch, 3, crops_cfg.global_size, crops_cfg.global_size, generator=generator)
                 for _ in range(2)]
        crops += [torch.randn(batch, 3, crops_cfg.local_size, crops_cfg.local_size, generator=generator)
                  for _ in range(crops_cfg.num_local)]
        crops = [c.to(device) for c in crops]
        reset_peak_memory(device)
        times = []
        for step in range(args.warmup + args.steps):
            started = time.perf_counter()
            loss, _ = run.distiller.step(crops, replace(run.schedules.at(step), freeze_last_layer=False))
            loss.item()  # wait for the step to finish
            synchronize(device)
            if step >= args.warmup:
                times.append(time.perf_counter() - started)
        run.run_log.close()

    median = statistics.median(times)
    memory = peak_memory(device)
    result = {
        "preset": args.preset,
        "overrides": args.overrides,
        "arch": config.model.arch,
        "patch_size": config.model.patch_size,
        "depth": config.model.depth or 12,
        "crops": f"2x{crops_cfg.global_size}+{crops_cfg.num_local}x{crops_cfg.local_size}",
        "batch_per_process": batch,
        "precision": "fp32" if run.distiller.amp_dtype is None else str(run.distiller.amp_dtype).replace("torch.", ""),
        "timed_steps": args.steps,
        "median_step_s": median,
        "images_per_s": batch / median,
        "peak_memory_mb": memory["peak_memory_mb"],
        "memory_kind": memory["memory_kind"],
        "machine": describe(device),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
