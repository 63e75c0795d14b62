"""How many CPU cores the input pipeline needs to feed a GPU; writes JSON.

On JPEG files of unequal, ImageNet-like sizes (``--jpeg-folder``, default: the Weizmann horses
and DAVIS frames of the shared test data) with the paper's multi-crop (2 x 224 + 10 x 96 px):

* ``pil``: the per-image path (``data.geometric=per_image``, ``data.photometric=loader``): PIL
  decode, crops and the whole photometric recipe in loader workers. Measured as images per
  second per CPU core (this process's CPU time with one torch thread: a loader worker).
* ``device``: ``data.geometric=device``. Its worker part (read the bytes, parse the header,
  draw the boxes and parameters) per CPU core, and its device part (batched decode, crops and
  photometric ops on ``--device``) as images per second of that device.

From those, at a training speed of ``--train-images-per-s`` (default 1,500, ViT-S/16 with this
multi-crop on one H100, roughly): the CPU cores each path's loader workers need, and the share
of the device's time the device part takes. CPU time rather than wall time makes the per-core
figures less sensitive to other load on the machine, but a busy machine (see the recorded load
average) still slows caches and memory; compare figures from one run only.

    python benchmarks/loader_throughput.py --out bench-loader.json
    python benchmarks/loader_throughput.py --device cuda --images 256 --out bench-loader-gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment_throughput import _jpeg_folder  # noqa: E402
from machine import describe, load_average  # noqa: E402


def _timed(work: Callable[[], None], repeats: int, device: torch.device) -> tuple[float, float]:
    """Median (CPU seconds of this process, wall seconds) of ``repeats`` runs after one warm-up."""

    def finish() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    work()
    finish()
    cpu, wall = [], []
    for _ in range(repeats):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        work()
        finish()
        cpu.append(time.process_time() - cpu0)
        wall.append(time.perf_counter() - wall0)
    return statistics.median(cpu), statistics.median(wall)


def measure(folder: Path, images: int, batch: int, repeats: int, device: torch.device, threads: int) -> dict:
    from dinossl.config import CropConfig
    from dinossl.data import MultiCropAugmentation, MultiCropDataset, collate_crops, to_model_input
    from dinossl.data.crop_recipe import CropRecipe
    from dinossl.data.device_crops import EncodedImageDataset, collate_encoded, cut_views, decode_batch
    from dinossl.data.images import ImageFolder

    source = ImageFolder(folder)
    images = min(images, len(source))
    picked = torch.linspace(0, len(source) - 1, images).round().long().tolist()  # spread over the folder's sizes
    recipe = CropRecipe.from_config(CropConfig(num_local=10))
    chunks = [picked[start:start + batch] for start in range(0, images, batch)]
    pil_dataset = MultiCropDataset(source, MultiCropAugmentation(recipe), seed=0)
    encoded_dataset = EncodedImageDataset(source, recipe, seed=0)
    encoded = []

    def pil_path() -> None:
        for chunk in chunks:
            collate_crops([pil_dataset[(i, 0)] for i in chunk])

    def device_worker_part() -> None:
        encoded.clear()
        for chunk in chunks:
            encoded.append(collate_encoded([encoded_dataset[(i, 0)] for i in chunk]))

    def device_part() -> None:
        for item in encoded:
            decoded = decode_batch(item.data, device)
            for view in cut_views(decoded, item.boxes, item.flips, item.params, recipe):
                to_model_input(view, device)

    torch.set_num_threads(1)  # a loader worker's setting
    pil_cpu, pil_wall = _timed(pil_path, repeats, torch.device("cpu"))
    worker_cpu, worker_wall = _timed(device_worker_part, repeats, torch.device("cpu"))
    torch.set_num_threads(threads)
    device_cpu, device_wall = _timed(device_part, repeats, device)
    sizes = sorted({source.load(i)[0].size for i in picked})
    return {
        "workload": {"images": images, "distinct_sizes": len(sizes), "smallest": sizes[0], "largest": sizes[-1],
                     "crops": "2x224+10x96", "batch": batch, "repeats": repeats},
        "pil": {"images_per_s_per_core": images / pil_cpu, "images_per_s_wall_one_thread": images / pil_wall},
        "device": {
            "worker_part_images_per_s_per_core": images / worker_cpu,
            "device_part_images_per_s": images / device_wall,
            "device_part_device": str(device),
            "device_part_torch_threads": threads if device.type == "cpu" else None,
            "device_part_images_per_s_per_core": images / device_cpu,
        },
    }


def cores_needed(result: dict, train_images_per_s: float) -> dict:
    pil = result["pil"]["images_per_s_per_core"]
    device = result["device"]
    return {
        "train_images_per_s": train_images_per_s,
        "pil_loader_cores": train_images_per_s / pil,
        "device_path_loader_cores": train_images_per_s / device["worker_part_images_per_s_per_core"],
        "device_part_share_of_device_time": train_images_per_s / device["device_part_images_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jpeg-folder", type=Path, default=None)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the device part on a CPU device")
    parser.add_argument("--train-images-per-s", type=float, default=1500.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("loader_throughput: error: --device cuda but torch sees no CUDA device")
    with tempfile.TemporaryDirectory() as workdir:
        folder, origin = _jpeg_folder(args.jpeg_folder, Path(workdir))
        if folder is None:
            sys.exit(f"loader_throughput: error: {origin}")
        load_before = load_average()
        result = measure(folder, args.images, args.batch, args.repeats, device, args.threads)
    report = {"command": " ".join(sys.argv), "machine": describe(device), "load_average_before": load_before,
              "load_average_after": load_average(), "images_from": origin, **result,
              "cores_needed": cores_needed(result, args.train_images_per_s)}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
