"""Images/s of the real training loop, end to end: the run's crop loader (reading and decoding
the image files), the crops moved to the device (and augmented there), ``Distiller.step``;
writes JSON.

It builds the run as ``dino train`` does (preset, ``data.path=``, overrides), runs
``--warmup`` steps, then times ``--steps`` steps (epochs restart as needed), with a host
synchronisation after each step so that each is whole. With ``--compare KEY=VALUE,...`` a
second configuration (the first plus those settings) is measured in the same run.

    python benchmarks/loop_throughput.py --preset vit-small-imagenet data.path=/data/jpegs \\
        data.num_workers=8 --compare data.photometric=device,data.geometric=device --out loop.json
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
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, synchronize  # noqa: E402


def measure_loop(config, folder: Path, warmup: int, steps: int) -> dict[str, Any]:
    """Seconds per step of the real loop (crop loader, crops to the device, step) and images/s."""
    from dinossl.data import to_model_input
    from dinossl.train import build_run

    run = build_run(config, folder)
    device = run.ctx.device
    times: list[float] = []
    step, epoch = 0, 0
    started = time.perf_counter()
    while step < warmup + steps:
        run.data.sampler.set_epoch(epoch)
        for crops, _, _ in run.data.loader:
            crops = [to_model_input(c, device) for c in crops]
            loss, _ = run.distiller.step(crops, replace(run.schedules.at(0), freeze_last_layer=False))
            loss.item()
            synchronize(device)
            now = time.perf_counter()
            if step >= warmup:
                times.append(now - started)
            started, step = now, step + 1
            if step == warmup + steps:
                break
        epoch += 1
    run.run_log.close()
    batch = config.train.batch_size_per_process
    median = statistics.median(times)
    return {"steps_per_epoch": run.steps_per_epoch, "median_step_s": median, "images_per_s": batch / median,
            "mean_images_per_s": batch * len(times) / sum(times), "warmup": warmup, "timed_steps": steps,
            "device": str(device), "precision": str(run.distiller.amp_dtype or "fp32").replace("torch.", ""),
            "batch": batch, "geometric": config.data.geometric, "photometric": config.data.photometric,
            "num_workers": config.data.num_workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--preset", default="vit-tiny-cifar")
    parser.add_argument("--compare", default=None, help="comma-separated settings of a second configuration")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_intermixed_args()  # KEY=VALUE settings may come before and after the options

    from dinossl.config import load_config

    overrides = ["train.progress_bar=false", "train.knn_at_end=false", *args.overrides]
    variants = {"base": overrides}
    if args.compare:
        variants["compare"] = overrides + args.compare.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in variants.items():
            config = load_config(args.preset, overrides=settings)
            results[name] = {"settings": settings, **measure_loop(config, Path(tmp) / name, args.warmup, args.steps)}
            print(json.dumps({name: results[name]}), flush=True)
    report = {"benchmark": "loop_throughput", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "preset": args.preset, "machine": describe(torch.device(results["base"]["device"])),
              "results": results}
    if "compare" in results:
        report["compare_over_base"] = results["compare"]["images_per_s"] / results["base"]["images_per_s"]
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
