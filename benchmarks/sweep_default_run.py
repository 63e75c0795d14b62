"""Sweep of the CPU default run: each row trains the `vit-tiny-cifar` preset with a few overrides
for a FIXED number of optimisation steps, then scores the teacher with the sample k-NN; writes JSON.

Rows are judged by k-NN at equal steps (not equal time), so that a machine shared with other
jobs slows a row down without changing its score; images/s and peak RSS are recorded beside it
(images/s is only comparable between rows run on a quiet machine). Each row runs in its own
process (its peak RSS is its own); the JSON file is rewritten after every row, so a long sweep
keeps what it measured if it is stopped.

    python benchmarks/sweep_default_run.py --list
    nice -n 5 python benchmarks/sweep_default_run.py --steps 1248 --out sweep.json default patch4
    python benchmarks/sweep_default_run.py --steps 1248 --out sweep.json --row mine model.depth=6 loss.teacher_temp=0.05

k-NN: weighted, k = 20, T = 0.07, cosine on the teacher's L2-normalised [CLS]; bank = the
sample's 10,000 training images, queries = its 2,000 held-out images (what `dino train` prints).
The row's schedules (lr, weight decay, momentum, teacher temperature) span its own steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name -> (overrides, what it tests). "default" is the preset as it stands.
ROWS: dict[str, tuple[list[str], str]] = {
    "default": ([], "the preset"),
    # tokens: patch 4 on 32 px gives 64 tokens per global crop (patch 8: 16)
    "patch4": (["model.patch_size=4"], "patch 4: 64 + 16 tokens per global / local crop"),
    "patch4_depth2": (["model.patch_size=4", "model.depth=2"], "patch 4, 2 blocks"),
    "depth2": (["model.depth=2"], "2 blocks"),
    "depth6": (["model.depth=6"], "6 blocks"),
    "small_depth4": (["model.arch=vit_small"], "width 384 (ViT-S), 4 blocks"),
    # multi-crop
    "local0": (["data.crops.num_local=0", "data.crops.global_scale=[0.14,1.0]"], "no local crops"),
    "local8": (["data.crops.num_local=8"], "8 local crops"),
    "local24": (["data.crops.local_size=24"], "local crops 24 px"),
    # batch and lr
    "batch64": (["train.batch_size_per_process=64"], "batch 64, same base lr (lr x2)"),
    "batch64_same_lr": (["train.batch_size_per_process=64", "optim.base_lr=2.0e-3"], "batch 64, same lr per step"),
    "batch16": (["train.batch_size_per_process=16"], "batch 16, same base lr (lr /2)"),
    "lr2x": (["optim.base_lr=8.0e-3"], "lr x2"),
    "lr_half": (["optim.base_lr=2.0e-3"], "lr /2"),
    # head
    "k1024": (["model.out_dim=1024"], "K = 1024 prototypes"),
    "k64": (["model.out_dim=64"], "K = 64 prototypes"),
    "bottleneck256": (["model.head_bottleneck_dim=256", "model.head_hidden_dim=1024"], "head 1024 -> 256"),
    # teacher
    "tt007": (["loss.teacher_temp=0.07", "loss.warmup_teacher_temp=0.04", "loss.warmup_teacher_temp_epochs=2"],
              "teacher temperature 0.04 -> 0.07 over 2 epochs"),
    "tt002": (["loss.teacher_temp=0.02", "loss.warmup_teacher_temp=0.02"], "teacher temperature 0.02"),
    "mom0996": (["optim.momentum_teacher=0.996"], "teacher momentum 0.996"),
    "mom098": (["optim.momentum_teacher=0.98"], "teacher momentum 0.98"),
    "wd_const": (["optim.weight_decay_end=0.04"], "weight decay constant 0.04"),
    "wd_04": (["optim.weight_decay_end=0.4"], "weight decay 0.04 -> 0.4 (reference)"),
    "sinkhorn": (["loss.centering=sinkhorn"], "Sinkhorn-Knopp centering"),
    # augmentation at 32 px
    "noblur": (["data.crops.blur_radius=[0.1,0.1]"], "blur radius 0.1 px (almost none)"),
    "jitter_ref": (["data.crops.color_jitter=[0.4,0.4,0.2,0.1]"], "the reference's colour jitter"),
    "scale_wide": (["data.crops.global_scale=[0.25,1.0]", "data.crops.local_scale=[0.08,0.25]"], "wider crop scales"),
    # data
    # (epochs of 1,562 steps: give --steps a multiple of it to compare with the sample's rows)
    "cifar50k": (["data.path=CIFAR_TRAIN"], "all 50,000 CIFAR-10 training images (folder)"),
}


class _EndScore:
    """Run monitor: the teacher's sample k-NN after training (and every ``every`` epochs)."""

    def __init__(self, global_size: int, every: int) -> None:
        import torch
        from dinossl.eval.classification.knn_monitor import SampleKnnMonitor
        self.scorer = SampleKnnMonitor(global_size, torch.device("cpu"))
        self.every, self.curve, self.final = every, [], None
        self.seconds = 0.0

    def after_epoch(self, epoch, distiller):
        if self.every and epoch % self.every == 0:
            started = time.perf_counter()
            self.curve.append([epoch, self.scorer.top1(distiller.teacher.backbone)])
            self.seconds += time.perf_counter() - started
        return None

    def after_training(self, distiller):
        started = time.perf_counter()
        self.final = self.scorer.top1(distiller.teacher.backbone)
        self.seconds += time.perf_counter() - started
        return None


def resolve(overrides: list[str], cifar_train: str) -> list[str]:
    return [o.replace("CIFAR_TRAIN", cifar_train) for o in overrides]


def run_row(overrides: list[str], steps: int, seed: int, knn_every: int) -> dict:
    """Train one row in this process; return its figures (the parent adds the peak RSS)."""
    from dinossl.config import load_config
    from dinossl.data import open_images
    from dinossl.train import train

    probe = load_config("vit-tiny-cifar", overrides=overrides)
    n_images = len(open_images(probe.data.path, "train"))
    per_epoch = n_images // probe.train.batch_size_per_process
    epochs = max(1, round(steps / per_epoch))
    config = load_config("vit-tiny-cifar", overrides=[
        *overrides, f"train.epochs={epochs}", f"train.seed={seed}", "train.progress_bar=false",
        "train.knn_at_end=false", "train.knn_every=0"])
    monitor = _EndScore(config.data.crops.global_size, knn_every)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        train(config, Path(tmp) / "run", monitors=[monitor], alone=True)
        wall_s = time.perf_counter() - started
        entries = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    steps_done = epochs * per_epoch
    step_rates = [e["images_per_s"] for e in entries if e.get("kind") == "step"]
    epoch_entries = [e for e in entries if e.get("kind") == "epoch"]
    train_s = sum(e["seconds"] for e in epoch_entries)
    return {"epochs": epochs, "steps": steps_done, "batch": config.train.batch_size_per_process,
            "images_trained": steps_done * config.train.batch_size_per_process, "train_images": n_images,
            "train_s": round(train_s, 1), "knn_s": round(monitor.seconds, 1), "wall_s": round(wall_s, 1),
            "images_per_s_median": round(statistics.median(step_rates), 1) if step_rates else None,
            "knn_top1": monitor.final, "knn_curve": monitor.curve,
            "final_teacher_entropy": epoch_entries[-1]["teacher_entropy"], "final_kl": epoch_entries[-1]["kl"],
            "final_loss": epoch_entries[-1]["loss"]}


def _child(args: argparse.Namespace, name: str, overrides: list[str]) -> dict:
    """Run one row in a child process; its figures plus its own peak RSS."""
    command = [sys.executable, __file__, "--_child", json.dumps(overrides), "--steps", str(args.steps),
               "--seed", str(args.seed), "--knn-every", str(args.knn_every), "--out", "-"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return {"row": name, "overrides": overrides, "error": f"exit status {os.waitstatus_to_exitcode(status)}"}
    figures = json.loads(out.strip().splitlines()[-1])
    return {"row": name, "overrides": overrides, **figures, "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "process_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", help="row names (see --list)")
    parser.add_argument("--row", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                        help="an extra row: its name, then its overrides")
    parser.add_argument("--steps", type=int, default=1248, help="optimisation steps per row (rounded to epochs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads per row (train.threads; 1 is far faster on an oversubscribed machine)")
    parser.add_argument("--knn-every", type=int, default=0, help="also score the teacher every N epochs")
    parser.add_argument("--cifar-train", default=os.environ.get("CIFAR10_TRAIN", "/tmp/cifar10/train"),
                        help="folder of the 50,000 CIFAR-10 training images (rows that name CIFAR_TRAIN)")
    parser.add_argument("--out", help="JSON file to write (rewritten after each row)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child is not None:
        print(json.dumps(run_row(json.loads(args._child), args.steps, args.seed, args.knn_every)))
        return
    if args.list:
        for name, (overrides, what) in ROWS.items():
            print(f"{name:16s} {what}: {' '.join(overrides) or '(none)'}")
        return
    unknown = [r for r in args.rows if r not in ROWS]
    if args.out is None:
        print("error: --out is required", file=sys.stderr)
        raise SystemExit(2)
    if unknown:
        print(f"error: unknown rows {', '.join(unknown)} (see --list)", file=sys.stderr)
        raise SystemExit(2)
    wanted = [(r, resolve(ROWS[r][0], args.cifar_train)) for r in args.rows]
    wanted += [(extra[0], extra[1:]) for extra in args.row]
    if args.threads:
        wanted = [(name, [*overrides, f"train.threads={args.threads}"]) for name, overrides in wanted]
    import torch
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "torch": torch.__version__, "python": platform.python_version()},
               "steps": args.steps, "seed": args.seed, "judged_by": "k-NN at fixed optimisation steps", "rows": []}
    for name, overrides in wanted:
        row = _child(args, name, overrides)
        results["rows"].append(row)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps({k: row.get(k) for k in ("row", "knn_top1", "images_per_s_median", "train_s", "peak_rss_mb", "error")}),
              flush=True)


if __name__ == "__main__":
    main()
