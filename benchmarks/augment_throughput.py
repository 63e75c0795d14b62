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

A third workload reads JPEG files of unequal, ImageNet-like sizes (``--jpeg-folder``, default:
the Weizmann horses and DAVIS frames of the shared test data, found through
DINOSSL_SHARED_DATA, default ../shared/data; skipped with a reason when absent) with DINO's
ImageNet crops, in three arrangements, each as images/s: "loader" (PIL decode + the whole
recipe per image), "device" (PIL decode + crop in the loader, photometric step on
``--device``), and "device_decode" (``data.geometric=device``: the loader reads bytes and
draws; decoding, crops and the photometric step on ``--device``). The loader part of each
runs in loader workers in training (it scales with ``data.num_workers``); the device part runs
in the training process, on its GPU.

    python benchmarks/augment_throughput.py --out bench-augment.json
    python benchmarks/augment_throughput.py --images 128 --large-images 16 --repeats 3 --out bench-augment.json
    python benchmarks/augment_throughput.py --device cuda --jpeg-images 256 --out bench-augment-gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, synchronize  # noqa: E402


def _upscaled(source, size: int):
    """The sample's images resized (bicubic) to size x size, as an in-memory image source."""
    from dinossl.data.images import ArrayImages

    pixels = np.stack([np.asarray(source.load(i)[0].resize((size, size), Image.BICUBIC)) for i in range(len(source))])
    return ArrayImages(pixels, np.zeros(len(pixels), dtype=np.int64), ["x"])


def _median_time(work: Callable[[], None], repeats: int, device: torch.device) -> tuple[float, list[float]]:
    work()  # warm-up (allocations, lazy imports)
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        synchronize(device)
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

    loader_s, loader_all = _median_time(run_loader_mode, repeats, device)
    batched_crop_s, batched_crop_all = _median_time(run_batched_crop_part, repeats, device)
    batched_photometric_s, batched_photometric_all = _median_time(photometric_step(batched_views), repeats, device)
    batched_total_s = batched_crop_s + batched_photometric_s
    geometric_s, geometric_all = _median_time(run_device_loader_part, repeats, device)
    photometric_s, photometric_all = _median_time(photometric_step(raw_batches), repeats, device)
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


def _jpeg_folder(given: Optional[Path], workdir: Path) -> tuple[Optional[Path], str]:
    """A folder of JPEG files of unequal sizes, or None and why not."""
    if given is not None:
        return given, str(given)
    shared = Path(os.environ.get("DINOSSL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    archives = [shared / "weizmann-horses-100.tar.gz", shared / "davis2016-3seq.tar.gz"]
    present = [a for a in archives if a.is_file()]
    if not present:
        return None, f"no JPEG workload: neither {archives[0].name} nor {archives[1].name} in {shared}"
    folder = workdir / "jpegs"
    for archive in present:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg") and "masks" not in m.name]
            tar.extractall(workdir / "extracted", members=members, filter="data")
    folder.mkdir()
    for index, path in enumerate(sorted((workdir / "extracted").rglob("*.jpg"))):
        (folder / f"{index:05d}.jpg").symlink_to(path)
    return folder, ", ".join(a.name for a in present)


def _measure_files(folder: Path, crops, num_images: int, batch: int, repeats: int, device: torch.device) -> dict:
    """images/s of the three arrangements on JPEG files (loader part and device part apart)."""
    from dinossl.data import GeometricMultiCrop, MultiCropAugmentation, MultiCropDataset, collate_crops, to_model_input
    from dinossl.data.crop_recipe import CropRecipe
    from dinossl.data.device_crops import EncodedImageDataset, collate_encoded, cut_views, decode_batch
    from dinossl.data.images import ImageFolder

    source = ImageFolder(folder)
    num_images = min(num_images, len(source))
    recipe = CropRecipe.from_config(crops)
    batches = [range(start, min(start + batch, num_images)) for start in range(0, num_images, batch)]
    loader_mode = MultiCropDataset(source, MultiCropAugmentation(recipe), seed=0)
    device_mode = MultiCropDataset(source, GeometricMultiCrop(recipe), seed=0)
    encoded_mode = EncodedImageDataset(source, recipe, seed=0)
    raw, encoded = [], []

    def run_loader_mode():
        for indices in batches:
            collate_crops([loader_mode[(i, 0)] for i in indices])

    def run_device_loader_part():
        raw.clear()
        for indices in batches:
            raw.append(collate_crops([device_mode[(i, 0)] for i in indices])[0])

    def run_device_part():
        for views in raw:
            for view in views:
                to_model_input(view, device)

    def run_encoded_loader_part():
        encoded.clear()
        for indices in batches:
            encoded.append(collate_encoded([encoded_mode[(i, 0)] for i in indices]))

    def run_decode_part():
        for item in encoded:
            images = decode_batch(item.data, device)
            for view in cut_views(images, item.boxes, item.flips, item.params, recipe):
                to_model_input(view, device)

    def rate(seconds: float) -> float:
        return num_images / seconds

    loader_s, _ = _median_time(run_loader_mode, repeats, device)
    device_loader_s, _ = _median_time(run_device_loader_part, repeats, device)
    device_part_s, _ = _median_time(run_device_part, repeats, device)
    encoded_loader_s, _ = _median_time(run_encoded_loader_part, repeats, device)
    decode_part_s, _ = _median_time(run_decode_part, repeats, device)
    sizes = {source.load(i)[0].size for i in range(min(num_images, 200))}
    return {
        "workload": f"JPEG files of {len(sizes)}+ sizes, DINO ImageNet crops",
        "crops": f"2x{crops.global_size}+{crops.num_local}x{crops.local_size}",
        "images": num_images, "batch": batch, "device": str(device),
        "image_sizes_example": sorted(sizes)[:5],
        "images_per_s": {
            "loader_mode": rate(loader_s),
            "device_mode": {"loader_part": rate(device_loader_s), "device_part": rate(device_part_s),
                            "both_in_one_process": rate(device_loader_s + device_part_s)},
            "device_decode_mode": {"loader_part": rate(encoded_loader_s), "device_part": rate(decode_part_s),
                                   "both_in_one_process": rate(encoded_loader_s + decode_part_s)},
        },
        "ratios": {
            "device_decode_loader_part_over_loader_mode": loader_s / encoded_loader_s,
            "device_decode_over_loader_mode_one_process": loader_s / (encoded_loader_s + decode_part_s),
        },
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
    parser.add_argument("--jpeg-folder", type=Path, default=None, help="JPEG files for the third workload")
    parser.add_argument("--jpeg-images", type=int, default=64, help="images of the JPEG workload (0: skip it)")
    parser.add_argument("--skip-sample-workloads", action="store_true", help="only the JPEG workload")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    from dinossl.config import CropConfig, load_config
    from dinossl.data.sample import load_sample

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    source = load_sample("train")
    tiny_crops = load_config("vit-tiny-cifar").data.crops
    results = [] if args.skip_sample_workloads else [
        _measure("cifar10-sample 32px, vit-tiny-cifar crops", source, tiny_crops, args.images, args.batch,
                 args.repeats, device),
        _measure(f"cifar10-sample upscaled to {args.large_size}px, DINO ImageNet crops",
                 _upscaled(load_sample("heldout"), args.large_size), CropConfig(), args.large_images,
                 min(args.batch, args.large_images), args.repeats, device),
    ]
    jpeg_result: dict = {"skipped": "--jpeg-images 0"}
    if args.jpeg_images > 0:
        with tempfile.TemporaryDirectory() as tmp:
            folder, origin = _jpeg_folder(args.jpeg_folder, Path(tmp))
            if folder is None:
                jpeg_result = {"skipped": origin}
            else:
                jpeg_result = {"files": origin, **_measure_files(folder, CropConfig(), args.jpeg_images,
                                                                 min(args.batch, args.jpeg_images), args.repeats, device)}
    report = {
        "benchmark": "augment_throughput",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": describe(device),
        "results": results,
        "jpeg_files": jpeg_result,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    summary = [{"workload": r["workload"], "loader_mode_crops_per_s": round(r["loader_mode"]["crops_per_s"]),
                "device_mode_crops_per_s": round(r["device_mode"]["total_crops_per_s"]),
                "device_mode_loader_part_crops_per_s": round(r["device_mode"]["loader_part"]["crops_per_s"]),
                "batched_mode_crops_per_s": round(r["batched_mode"]["total_crops_per_s"]),
                "ratios": {k: round(v, 2) for k, v in r["ratios"].items()}} for r in results]
    print(json.dumps({"sample_workloads": summary, "jpeg_files": jpeg_result.get("images_per_s", jpeg_result)},
                     indent=2))


if __name__ == "__main__":
    main()
