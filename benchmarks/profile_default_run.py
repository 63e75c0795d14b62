"""Where the default run's time goes: crops, photometric augmentation, the training step, and
the k-NN that `dino train` runs at the end; writes JSON.

Builds the run exactly as ``dino train`` does (``dinossl.train.build_run``), then times ``--steps``
steps of the trainer's own loop body in its three parts: the loader handing over a batch
(``data.geometric=batched``: the crops are cut here), ``to_model_input`` (``data.photometric=device``:
jitter, grayscale, blur, solarisation, normalisation) and ``Distiller.step`` (forwards, loss,
backward, AdamW, EMA); then the end-of-run k-NN (trained teacher, random init and the two
raw-pixel baselines on the sample). Shares are of the measured steps; the per-run estimate
scales them to the preset's step count.

    python benchmarks/profile_default_run.py --steps 100 --out profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--preset", default="vit-tiny-cifar")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from dinossl.config import load_config
    from dinossl.data.photometric import to_model_input
    from dinossl.eval.classification.knn_monitor import SampleKnnMonitor, knn_against_random_init
    from dinossl.train import build_run

    config = load_config(args.preset, overrides=[*args.overrides, "train.progress_bar=false"])
    parts = {"crops": 0.0, "photometric": 0.0, "step": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(config, Path(tmp) / "run")
        device = run.ctx.device
        run.data.set_position(0, 0)
        batches = iter(run.data.loader)
        for step in range(args.steps):
            t0 = time.perf_counter()
            crops, _, _ = next(batches)
            t1 = time.perf_counter()
            crops = [to_model_input(c, device) for c in crops]
            t2 = time.perf_counter()
            loss, _ = run.distiller.step(crops, run.schedules.at(step))
            loss.item()
            t3 = time.perf_counter()
            if step >= 3:  # warm-up steps not counted
                parts["crops"] += t1 - t0
                parts["photometric"] += t2 - t1
                parts["step"] += t3 - t2
        started = time.perf_counter()
        monitor = SampleKnnMonitor(config.data.crops.global_size, device)
        knn = knn_against_random_init(config, run.distiller.teacher.backbone, monitor)
        knn_s = time.perf_counter() - started
        run.run_log.close()
    timed = args.steps - 3
    per_step = {k: v / timed for k, v in parts.items()}
    run_steps = config.train.epochs * run.steps_per_epoch
    estimate = {k: v * run_steps for k, v in per_step.items()}
    total = sum(estimate.values()) + knn_s
    result = {
        "preset": args.preset, "overrides": args.overrides, "timed_steps": timed,
        "seconds_per_step": {k: round(v, 4) for k, v in per_step.items()},
        "run_steps": run_steps, "estimated_run_s": {**{k: round(v, 1) for k, v in estimate.items()},
                                                    "end_knn": round(knn_s, 1)},
        "share_of_run": {**{k: round(v / total, 3) for k, v in estimate.items()}, "end_knn": round(knn_s / total, 3)},
        "images_per_s_step_only": round(config.train.batch_size_per_process / per_step["step"], 1),
        "knn": {k: knn[k] for k in ("trained", "random_init", "raw_pixels", "raw_pixels_mean_subtracted")},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
