"""dinossl against lightly's DINO at equal wall-clock budgets on the CPU default run; writes JSON.

Both sides train the same backbone (the package's ViT of the preset: same width, depth, patch)
with a head of the same shape, on the same images (the built-in sample's 10,000 training
images), with the same crops (2 global + N local, sizes, scales, jitter, blur, solarisation of
the preset), batch, optimiser (AdamW, lr warm-up + cosine, weight decay cosine, clipping per
tensor), teacher momentum and temperatures, for each wall-clock budget, one after the other:

- dinossl: ``dinossl.train.train`` with the preset, as ``dino train`` runs it;
- lightly: ``DINOProjectionHead`` + ``DINOLoss`` + ``DINOTransform`` in the training loop of
  lightly's DINO example (one backbone pass per view, the momentum update before each step,
  ``cancel_last_layer_gradients``), images decoded and augmented by a torch DataLoader.

Each side's schedules span the steps it is expected to make in the budget (its images/s
measured first, in a probe of ``--probe-steps`` steps); each training stops at the budget at
the latest. Reported per side and budget: training images/s (whole loop, data included), steps
done, peak RSS of the process (each side and budget runs in its own process), and the teacher's
k-NN top-1 on the sample (weighted, k = 20, T = 0.07, cosine; the same
``SampleKnnMonitor`` code for both).

lightly is an optional benchmark dependency (never needed by the tests). Install it outside the
repository, e.g. reusing this environment's torch::

    pip install --no-deps --target /tmp/lightly-pkgs lightly lightning_utilities
    PYTHONPATH=/tmp/lightly-pkgs python benchmarks/compare_lightly.py --budgets 120 300 600 --out lightly.json

Run it on a quiet machine: both sides' figures are times.
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

import torch


def _config(overrides: list[str], epochs: int = 1):
    from dinossl.config import load_config
    return load_config("vit-tiny-cifar", overrides=[*overrides, f"train.epochs={epochs}", "train.progress_bar=false",
                                                    "train.knn_at_end=false", "train.knn_every=0"])


def _knn(backbone: torch.nn.Module, size: int) -> float:
    from dinossl.eval.classification.knn_monitor import SampleKnnMonitor
    return SampleKnnMonitor(size, torch.device("cpu")).top1(backbone.eval())


# ---------------------------------------------------------------- dinossl side

class _Deadline:
    """Run monitor that only keeps the teacher for scoring."""

    def __init__(self) -> None:
        self.teacher = None

    def after_epoch(self, epoch, distiller):
        return None

    def after_training(self, distiller):
        self.teacher = distiller.teacher.backbone
        return None


def run_dinossl(overrides: list[str], budget_s: float, rate: float | None) -> dict:
    """Train with ``dinossl.train.train`` for the epochs the budget holds at ``rate`` images/s
    (None: one epoch, the probe)."""
    from dinossl.data import open_images
    from dinossl.train import train

    n_images = len(open_images(None, "train"))
    epochs = 1 if rate is None else max(1, int(budget_s * rate // n_images))
    config = _config(overrides, epochs)
    keeper = _Deadline()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        train(config, Path(tmp) / "run", monitors=[keeper], alone=True)
        seconds = time.perf_counter() - started
        log = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    epoch_seconds = sum(e["seconds"] for e in log if e.get("kind") == "epoch")
    steps = epochs * (n_images // config.train.batch_size_per_process)
    rates = [e["images_per_s"] for e in log if e.get("kind") == "step"]
    return {"epochs": epochs, "steps": steps, "train_s": round(epoch_seconds, 1), "wall_s": round(seconds, 1),
            "images_per_s": round(steps * config.train.batch_size_per_process / epoch_seconds, 1),
            "images_per_s_median_interval": round(statistics.median(rates), 1),
            "knn_top1": _knn(keeper.teacher, config.data.crops.global_size)}


# ---------------------------------------------------------------- lightly side

class _SampleViews(torch.utils.data.Dataset):
    def __init__(self, transform) -> None:
        from dinossl.data.sample import load_sample
        self.source, self.transform = load_sample("train"), transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        image, label = self.source.load(index)
        return self.transform(image), label


def _lightly_transform(config):
    from lightly.transforms.dino_transform import DINOTransform
    c = config.data.crops
    bright, contrast, sat, hue = c.color_jitter
    return DINOTransform(
        global_crop_size=c.global_size, global_crop_scale=tuple(c.global_scale), local_crop_size=c.local_size,
        local_crop_scale=tuple(c.local_scale), n_local_views=c.num_local, hf_prob=0.5, cj_prob=c.color_jitter_p,
        cj_strength=1.0, cj_bright=bright, cj_contrast=contrast, cj_sat=sat, cj_hue=hue,
        random_gray_scale=c.grayscale_p, gaussian_blur=(1.0, 0.1, 0.5), sigmas=tuple(c.blur_radius),
        solarization_prob=0.2)


def run_lightly(overrides: list[str], budget_s: float, rate: float | None, probe_steps: int, workers: int) -> dict:
    """lightly's DINO loop with the preset's recipe; at most ``budget_s`` seconds of training
    (``rate`` None: a probe of ``probe_steps`` steps)."""
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    from dinossl.models import build_backbone
    from dinossl.models.factory import backbone_spec
    from dinossl.objective.schedules import build_schedules
    from dinossl.runtime.precision import resolve_precision

    config = _config(overrides)
    m, o, batch = config.model, config.optim, config.train.batch_size_per_process
    if config.train.threads > 0:  # as dinossl's run applies it
        torch.set_num_threads(config.train.threads)
    torch.manual_seed(config.train.seed)
    student_backbone = build_backbone(backbone_spec(m), drop_path_rate=m.drop_path)
    teacher_backbone = build_backbone(backbone_spec(m))
    teacher_backbone.load_state_dict(student_backbone.state_dict())
    student_head = DINOProjectionHead(student_backbone.embed_dim, m.head_hidden_dim, m.head_bottleneck_dim,
                                      m.out_dim, freeze_last_layer=o.freeze_last_layer)
    teacher_head = DINOProjectionHead(student_backbone.embed_dim, m.head_hidden_dim, m.head_bottleneck_dim, m.out_dim)
    teacher_head.load_state_dict(student_head.state_dict())  # (weight-normalised: no deepcopy)
    deactivate_requires_grad(teacher_backbone)
    deactivate_requires_grad(teacher_head)

    dataset = _SampleViews(_lightly_transform(config))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    per_epoch = len(loader)
    planned = probe_steps if rate is None else max(1, int(budget_s * rate // batch))
    epochs = -(-planned // per_epoch)
    schedules = build_schedules(o, config.loss, epochs, per_epoch, batch)
    criterion = DINOLoss(output_dim=m.out_dim, warmup_teacher_temp=config.loss.warmup_teacher_temp,
                         teacher_temp=config.loss.teacher_temp, warmup_teacher_temp_epochs=max(1, config.loss.warmup_teacher_temp_epochs),
                         student_temp=config.loss.student_temp, center_momentum=config.loss.center_momentum)
    params = list(student_backbone.parameters()) + list(student_head.parameters())
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
    amp = resolve_precision(config.train.precision, torch.device("cpu"))
    student_backbone.train()
    student_head.train()

    step, started, first_timed = 0, time.perf_counter(), None
    done = False
    for epoch in range(epochs):
        for views, _ in loader:
            if step == 2:  # the rate excludes the first steps (workers starting)
                first_timed = time.perf_counter()
            values = schedules.at(step)
            for group in optimizer.param_groups:
                group["lr"] = values.lr
            optimizer.param_groups[0]["weight_decay"] = values.weight_decay
            update_momentum(student_backbone, teacher_backbone, m=values.momentum)
            update_momentum(student_head, teacher_head, m=values.momentum)
            with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                with torch.no_grad():
                    teacher_out = [teacher_head(teacher_backbone(v)).float() for v in views[:2]]
                student_out = [student_head(student_backbone(v)).float() for v in views]
            loss = criterion(teacher_out, student_out, teacher_temp=values.teacher_temp)
            loss.backward()
            student_head.cancel_last_layer_gradients(current_epoch=epoch)
            if o.clip_grad:
                for p in params:
                    if p.grad is not None:
                        torch.nn.utils.clip_grad_norm_(p, o.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step >= planned or time.perf_counter() - started > budget_s:
                done = True
                break
        if done:
            break
    ended = time.perf_counter()
    timed_steps = step - 2 if first_timed is not None else step
    timed_s = ended - (first_timed or started)
    return {"epochs_planned": epochs, "steps_planned": planned, "steps": step, "train_s": round(ended - started, 1),
            "images_per_s": round(timed_steps * batch / timed_s, 1), "final_loss": loss.item(),
            "knn_top1": _knn(teacher_backbone, config.data.crops.global_size)}


# ---------------------------------------------------------------- driver

def _child(args: argparse.Namespace, side: str, budget: float, rate: float | None) -> dict:
    command = [sys.executable, __file__, "--_child", side, "--_budget", str(budget),
               "--_rate", "probe" if rate is None else str(rate), "--probe-steps", str(args.probe_steps),
               "--lightly-workers", str(args.lightly_workers), "--out", "-", *args.overrides]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"the {side} run (budget {budget} s) failed with exit status {code}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="preset overrides for both sides")
    parser.add_argument("--budgets", type=float, nargs="+", default=[120.0, 300.0, 600.0],
                        help="wall-clock training budgets in seconds")
    parser.add_argument("--probe-steps", type=int, default=60, help="lightly's speed probe (dinossl's: one epoch)")
    parser.add_argument("--lightly-workers", type=int, default=1, help="DataLoader workers on the lightly side")
    parser.add_argument("--rates", type=float, nargs=2, metavar=("DINOSSL", "LIGHTLY"),
                        help="images/s to plan the schedules with, instead of measuring them first")
    parser.add_argument("--sides", nargs="+", choices=("dinossl", "lightly"), default=["dinossl", "lightly"],
                        help="which sides to run (default both)")
    parser.add_argument("--out", required=True, help="JSON file to write ('-': stdout)")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--_rate", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:
        rate = None if args._rate == "probe" else float(args._rate)
        if args._child == "dinossl":
            result = run_dinossl(args.overrides, args._budget, rate)
        else:
            result = run_lightly(args.overrides, args._budget, rate, args.probe_steps, args.lightly_workers)
        print(json.dumps(result))
        return

    try:
        import lightly
    except ImportError:
        print("error: lightly is not importable (pip install --no-deps --target DIR lightly lightning_utilities; "
              "PYTHONPATH=DIR)", file=sys.stderr)
        raise SystemExit(2)
    results: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__, "lightly": lightly.__version__},
        "preset": "vit-tiny-cifar", "overrides": args.overrides, "budgets_s": args.budgets, "runs": []}
    rates = dict(zip(("dinossl", "lightly"), args.rates or ()))
    for side in () if args.rates else args.sides:
        probe = _child(args, side, max(args.budgets), None)
        rates[side] = probe["images_per_s"]
        results["runs"].append({"side": side, "probe": True, **probe})
    for budget in args.budgets:
        for side in args.sides:
            results["runs"].append({"side": side, "budget_s": budget, **_child(args, side, budget, rates[side])})
            text = json.dumps(results, indent=1) + "\n"
            if args.out == "-":
                continue
            Path(args.out).write_text(text)
            print(json.dumps(results["runs"][-1]), flush=True)
    if args.out == "-":
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
