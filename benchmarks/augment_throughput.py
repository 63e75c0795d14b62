"""Crops/s of the multi-crop augmentation in its three arrangements; writes JSON.

"loader" (``data.photometric=loader``): the whole recipe per image in the loader
(MultiCropAugmentation + collate).
"device" (``data.photometric=device``): the loader part (crop, flip, parameter draws, collate:
GeometricMultiCrop) plus the batched photometric step (apply_photometric) on ``--device``.
"batched" (``data.geometric=batched``, which implies device): each view's crops of a batch cut
in one call from in-memory pixels (BatchedMultiCrops), plus the same photometric step. All run
in this process with
``--threads`` torch threads (a DataLoader worker runs with 1), each timed ``--repeats`` times;
the JSON holds the median times, crops/s and the ratios, all from this one run.

Two workloads: the built-in CIFAR-10 sample with the vit-tiny-cifar preset's crops (2x32 + 4x16
px), and the sample upscaled to ``--large-size`` px with DINO's ImageNet crops (2x224 + 8x96).

    python benchmarks/augment_throughput.py --out bench-augment.json
    python benchmarks/augment_throughput.py --images 128 --large-images 16 --repeats 3 --out bench-augment.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image


def _upscaled(source, size: int):
    """The sample's images resized (bicubic) to size x size, as an in-memory image source."""
    from dinossl.data.images import ArrayImages

    pixels = np.stack([np.asarray(source.load(i)[0].resize((size, size), Image.BICUBIC)) for i in range(len(source))])
    return ArrayImages(pixels, np.zeros(len(pixels), dtype=np.int64), ["x"])


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _median_time(work: Callable[[], None], repeats: int, sync: Callable[[], None]) -> tuple[float, list[float]]:
    work()  # warm-up (allocations, lazy imports)
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def _measure(name: str, source, crops, num_images: int, batch: int, repeats: int, device: torch.device) -> dict:
    from dinossl.data import GeometricMultiCrop, MultiCropAugmentation, MultiCropDataset, collate_crops, to_model_input
    from dinossl.data.batched_crops import BatchedMultiCrops

    num_images = min(num_images, len(source))
    batches = [range(start, min(start + batch, num_images)) for start in range(0, num_images, batch)]
    crops_per_image = 2 + crops.num_local
    total_crops = num_images * crops_per_image
    loader_mode = MultiCropDataset(source, MultiCropAugmentation(crops), seed=0)
    device_mode = MultiCropDataset(source, GeometricMultiCrop(crops), seed=0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run_loader_mode():
        for indices in batches:
            collate_crops([loader_mode[(i, 0)] for i in indices])

    raw_batches: list = []

    def run_device_loader_part():
        raw_batches.clear()
        for indices in batches:
            raw_batches.append(collate_crops([device_mode[(i, 0)] for i in indices])[0])

    def photometric_step(batches_of_views: list) -> Callable[[], None]:
        """The device-side photometric step over already-cut batches (device and batched modes)."""
        def run():
            for views in batches_of_views:
                for view in views:
                    to_model_input(view, device)
        return run

    def two_parts(first: str, first_s: float, first_all: list, second_s: float, second_all: list) -> dict:
        """JSON record of a mode made of a cropping part and the photometric step."""
        return {
            first: {"median_s": first_s, "crops_per_s": total_crops / first_s, "times_s": first_all},
            "device_part": {"median_s": second_s, "crops_per_s": total_crops / second_s, "times_s": second_all,
                            "device": str(device)},
            "total_crops_per_s": total_crops / (first_s + second_s),
        }

    pixels = torch.from_numpy(np.stack([np.asarray(source.load(i)[0]) for i in range(num_images)]))
    pixels = pixels.permute(0, 3, 1, 2).contiguous()
    batched_crops = BatchedMultiCrops(crops)
    batched_views: list = []

    def run_batched_crop_part():
        batched_views.clear()
        generator = torch.Generator().manual_seed(0)
        for indices in batches:
            batched_views.append(batched_crops(pixels[indices.start:indices.stop], generator))

    loader_s, loader_all = _median_time(run_loader_mode, repeats, sync)
    batched_crop_s, batched_crop_all = _median_time(run_batched_crop_part, repeats, sync)
    batched_photometric_s, batched_photometric_all = _median_time(photometric_step(batched_views), repeats, sync)
    batched_total_s = batched_crop_s + batched_photometric_s
    geometric_s, geometric_all = _median_time(run_device_loader_part, repeats, sync)
    photometric_s, photometric_all = _median_time(photometric_step(raw_batches), repeats, sync)
    device_total_s = geometric_s + photometric_s
    return {
        "workload": name,
        "crops": f"2x{crops.global_size}+{crops.num_local}x{crops.local_size}",
        "images": num_images,
        "batch": batch,
        "total_crops": total_crops,
        "loader_mode": {"median_s": loader_s, "crops_per_s": total_crops / loader_s, "times_s": loader_all},
        "device_mode": two_parts("loader_part", geometric_s, geometric_all, photometric_s, photometric_all),
        "batched_mode": two_parts("crop_part", batched_crop_s, batched_crop_all, batched_photometric_s,
                                  batched_photometric_all),
        "ratios": {
            "loader_work_removed": loader_s / geometric_s,  # loader-side crops/s, device mode over loader mode
            "end_to_end": loader_s / device_total_s,  # both parts on this machine, device mode over loader mode
            "batched_end_to_end": loader_s / batched_total_s,  # batched mode over loader mode
            "batched_over_device": device_total_s / batched_total_s,
        },
        "loader_ms_per_image": {"loader_mode": 1e3 * loader_s / num_images,
                                "device_mode": 1e3 * geometric_s / num_images},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="images of the 32-px workload")
    parser.add_argument("--large-images", type=int, default=32, help="images of the 224/96 workload")
    parser.add_argument("--large-size", type=int, default=256, help="side of the upscaled images")
    parser.add_argument("--batch", type=int, default=64, help="images per batch for the device step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a loader worker has 1)")
    parser.add_argument("--device", default="cpu", help="where the device part runs (cpu, cuda)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    from dinossl.config import CropConfig, load_config
    from dinossl.data.sample import load_sample

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    source = load_sample("train")
    tiny_crops = load_config("vit-tiny-cifar").data.crops
    results = [
        _measure("cifar10-sample 32px, vit-tiny-cifar crops", source, tiny_crops, args.images, args.batch,
                 args.repeats, device),
        _measure(f"cifar10-sample upscaled to {args.large_size}px, DINO ImageNet crops",
                 _upscaled(load_sample("heldout"), args.large_size), CropConfig(), args.large_images,
                 min(args.batch, args.large_images), args.repeats, device),
    ]
    report = {
        "benchmark": "augment_throughput",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"processor": _cpu_model(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    summary = [{"workload": r["workload"], "loader_mode_crops_per_s": round(r["loader_mode"]["crops_per_s"]),
                "device_mode_crops_per_s": round(r["device_mode"]["total_crops_per_s"]),
                "device_mode_loader_part_crops_per_s": round(r["device_mode"]["loader_part"]["crops_per_s"]),
                "batched_mode_crops_per_s": round(r["batched_mode"]["total_crops_per_s"]),
                "ratios": {k: round(v, 2) for k, v in r["ratios"].items()}} for r in results]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
