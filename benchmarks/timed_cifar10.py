"""A DINO pretraining on the 50,000 CIFAR-10 training JPEGs sized to a time budget, then its k-NN
on the 10,000 test images; writes JSON.

The number of epochs is chosen from a calibration on the same data and device: ``--calibration``
steps of the real loop (crop loader, crops to the device, ``Distiller.step``) after warm-up
steps, so that training takes about ``--minutes``. Then ``dino train``'s ``train`` runs those
epochs and the k-NN protocol (k = 20, T = 0.07, bank = the train split) scores the exported
teacher and the same network at random initialisation. The JSON holds the settings, the
calibration, the epochs, the training's wall time and median images/s (its ``log.jsonl``), and
both k-NN figures.

    python benchmarks/timed_cifar10.py --minutes 3 train.batch_size_per_process=256 --out cifar10-3min.json
    python benchmarks/timed_cifar10.py --minutes 0.2 --per-class 20 --out dry.json    # a quick check

The CIFAR-10 archive comes from ``--archive`` or DINOSSL_SHARED_DATA (default ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_throughput import measure_loop  # noqa: E402
from machine import describe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def cifar_folder(archive: Path, workdir: Path, per_class: Optional[int]) -> Path:
    """<workdir>/cifar10 with train/ and test/ class folders (the first ``per_class`` train and
    ``per_class // 5`` test images per class when given)."""
    members_per_split = None if per_class is None else {"train": per_class, "test": max(1, per_class // 5)}
    counts: dict[tuple[str, str], int] = {}

    def wanted(tar: tarfile.TarFile):
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 4:
                continue
            if members_per_split is not None:
                key = (parts[1], parts[2])
                if counts.get(key, 0) >= members_per_split.get(parts[1], 0):
                    continue
                counts[key] = counts.get(key, 0) + 1
            yield member

    with tarfile.open(archive) as tar:
        tar.extractall(workdir, members=wanted(tar), filter="data")
    return workdir / "cifar10"


def knn_top1(checkpoint_dir: Path, root: Path, config) -> dict[str, Any]:
    from dinossl.eval.baselines import random_init_like
    from dinossl.eval.classification.knn import KnnSettings
    from dinossl.eval.classification.labelled_splits import open_splits
    from dinossl.eval.classification.protocols import ImageSettings, knn_protocol
    from dinossl.runtime.distributed import init_distributed
    from dinossl.weights import load_backbone

    ctx = init_distributed(config.train.device)
    splits = open_splits(train=root / "train", val=root / "test")
    size = config.data.crops.global_size
    images = ImageSettings(resize=size, crop=size, batch_size=512, num_workers=min(8, os.cpu_count() or 1))
    trained = load_backbone(checkpoint_dir / "checkpoint.pth", which="teacher")
    figures = {}
    for name, backbone in (("trained", trained), ("random_init", random_init_like(trained, config.train.seed))):
        started = time.perf_counter()
        result = knn_protocol(backbone.to(ctx.device).eval(), splits, images, KnnSettings(ks=(20,)), ctx)
        figures[name] = {"top1_k20": result["knn"]["20"]["top1"], "seconds": time.perf_counter() - started}
    return {"bank": len(splits.train), "queries": len(splits.val), **figures,
            "gain": figures["trained"]["top1_k20"] - figures["random_init"]["top1_k20"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings on top of --preset")
    parser.add_argument("--preset", default="vit-tiny-cifar")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time to aim for")
    parser.add_argument("--archive", type=Path, default=None, help="cifar10-jpg.tar.gz")
    parser.add_argument("--per-class", type=int, default=None, help="a subset: N train, N/5 test images per class")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=20, help="timed calibration steps")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    from dinossl.config import load_config
    from dinossl.train import train

    shared = Path(os.environ.get("DINOSSL_SHARED_DATA", REPO.parent / "shared" / "data"))
    archive = args.archive or shared / "cifar10-jpg.tar.gz"
    if not archive.is_file():
        sys.exit(f"timed_cifar10: error: {archive} not found (set DINOSSL_SHARED_DATA or --archive)")
    overrides = ["train.progress_bar=false", "train.knn_at_end=false", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        root = cifar_folder(archive, Path(tmp), args.per_class)
        extract_s = time.perf_counter() - started
        config = load_config(args.preset, overrides=[f"data.path={root / 'train'}", *overrides])
        calibration = measure_loop(config, Path(tmp) / "calibration", args.warmup, args.calibration)
        epoch_s = calibration["steps_per_epoch"] * calibration["median_step_s"]
        epochs = max(1, math.floor(args.minutes * 60 / epoch_s))
        config = load_config(args.preset, overrides=[f"data.path={root / 'train'}", *overrides, f"train.epochs={epochs}"])
        started = time.perf_counter()
        train(config, Path(tmp) / "run")
        train_s = time.perf_counter() - started
        records = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
        rates = [r["images_per_s"] for r in records if r["kind"] == "step"]
        rates = rates[1:] or rates  # the first interval holds the warm-up
        knn = knn_top1(Path(tmp) / "run", root, config)
    report = {
        "benchmark": "timed_cifar10",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "preset": args.preset, "overrides": overrides, "per_class": args.per_class, "minutes": args.minutes,
        "machine": describe(torch.device(calibration["device"])),
        "extract_s": extract_s, "calibration": calibration, "epochs": epochs,
        "estimated_train_s": epochs * epoch_s, "train_s": train_s,
        "images_per_s_median": statistics.median(rates) if rates else None,
        "precision": config.train.precision, "batch_per_process": config.train.batch_size_per_process,
        "knn": knn,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("epochs", "train_s", "images_per_s_median", "knn")}, indent=2))


if __name__ == "__main__":
    main()
