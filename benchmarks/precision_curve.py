"""The loss curve of a bf16-autocast run next to an fp32 run of the same seed; writes JSON (and a
PNG with matplotlib).

Both runs are the same ``dino train`` (``--preset``, default the default run's, on the built-in
sample unless ``data.path=`` says otherwise), the same seed and crops, ``train.log_every``
steps per point; only ``train.precision`` differs. The JSON holds both curves (step, loss,
teacher entropy, KL) and their largest and mean relative loss difference, and each run's
seconds and final k-NN when the preset has ``train.knn_at_end``.

    python benchmarks/precision_curve.py --epochs 1 --out precision-curve.json --png precision-curve.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402


def run(preset: str, overrides: list[str], precision: str, folder: Path) -> dict[str, Any]:
    from dinossl.config import load_config
    from dinossl.eval.classification.knn_monitor import KnnDuringTraining
    from dinossl.train import train

    config = load_config(preset, overrides=[*overrides, f"train.precision={precision}", "train.progress_bar=false"])
    monitors = [KnnDuringTraining(config, at_end=True)] if config.train.knn_at_end and config.data.path is None else []
    started = time.perf_counter()
    result = train(config, folder, monitors=monitors)
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    return {
        "precision": precision,
        "seconds": seconds,
        "curve": [{k: r[k] for k in ("step", "epoch", "loss", "teacher_entropy", "kl", "images_per_s")} for r in steps],
        "epochs": [r for r in records if r["kind"] == "epoch"],
        "knn": result.reports[0] if result.reports else None,
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # optional: the [viz] extra

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, result in report["runs"].items():
        steps = [p["step"] for p in result["curve"]]
        axes[0].plot(steps, [p["loss"] for p in result["curve"]], label=name, linewidth=1)
        axes[1].plot(steps, [p["teacher_entropy"] for p in result["curve"]], label=name, linewidth=1)
    axes[0].set(xlabel="step", ylabel="DINO loss", title="loss")
    axes[1].set(xlabel="step", ylabel="nats", title="teacher entropy")
    for axis in axes:
        axis.legend()
    settings = textwrap.fill(f"{report['preset']} {' '.join(report['overrides'])}", width=140)
    figure.suptitle(f"fp32 vs bf16 autocast, seed {report['seed']}\n{settings}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--preset", default="vit-tiny-cifar")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the preset's)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--png", type=Path, default=None, help="figure to write (needs matplotlib)")
    args = parser.parse_args()

    overrides = list(args.overrides) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    from dinossl.config import load_config

    config = load_config(args.preset, overrides=overrides)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            runs[precision] = run(args.preset, overrides, precision, Path(tmp) / precision)
    fp32 = [p["loss"] for p in runs["fp32"]["curve"]]
    bf16 = [p["loss"] for p in runs["bf16"]["curve"]]
    relative = [abs(a - b) / abs(a) for a, b in zip(fp32, bf16)]
    report = {
        "benchmark": "precision_curve",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "preset": args.preset, "overrides": overrides, "seed": config.train.seed,
        "machine": describe(torch.device("cuda" if torch.cuda.is_available() and config.train.device != "cpu" else "cpu")),
        "loss_relative_difference": {"max": max(relative), "mean": sum(relative) / len(relative),
                                     "last": relative[-1], "points": len(relative)},
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.png is not None:
        plot(report, args.png)
    print(json.dumps({k: report[k] for k in ("loss_relative_difference",)} |
                     {name: {"seconds": r["seconds"], "knn": r["knn"]} for name, r in runs.items()}, indent=2))


if __name__ == "__main__":
    main()
