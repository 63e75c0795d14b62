"""CPU latency per image of a backbone exported by ``dino export --format onnx``, run by
onnxruntime, against the same backbone in PyTorch eager (float32, no gradient); writes JSON.

The backbone is built with random weights in a released architecture (default ``vit_small``/16,
the architecture of dino_vits16; the numbers do not depend on the weights' values), exported
once with :func:`dinossl.inference.onnx_export.export_onnx`, and both runtimes are timed on the
same random batch: ``--warmup`` untimed passes, then the median of ``--repeats`` timed passes,
divided by the batch size. Both use all the process's threads unless ``--threads``. The
outputs are compared too (max abs difference). Needs the ``onnx`` extra.

    python benchmarks/onnx_latency.py --out bench-onnx.json
    python benchmarks/onnx_latency.py --arch resnet50 --batch 1 8 --out bench-onnx-r50.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from dinossl.inference.onnx_export import export_onnx, onnx_session
from dinossl.models import build_resnet50, build_vit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402


def _median_seconds(run, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_small", choices=("vit_tiny", "vit_small", "vit_base", "resnet50"))
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="threads of both runtimes (default: torch's)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = (build_resnet50() if args.arch == "resnet50"
             else build_vit(args.arch, patch_size=args.patch_size, img_size=args.image_size)).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, Path(folder) / "backbone.onnx")
        session = onnx_session(path, threads=threads)
        rows = []
        for batch in args.batch:
            images = torch.randn(batch, 3, args.image_size, args.image_size)
            feed = {"images": images.numpy()}
            with torch.no_grad():
                eager = _median_seconds(lambda: model(images), args.warmup, args.repeats)
                expected = model(images).numpy()
            onnx = _median_seconds(lambda: session.run(None, feed), args.warmup, args.repeats)
            difference = float(np.abs(session.run(None, feed)[0] - expected).max())
            rows.append({"batch": batch, "pytorch_eager_ms_per_image": round(1000 * eager / batch, 2),
                         "onnxruntime_ms_per_image": round(1000 * onnx / batch, 2),
                         "speedup": round(eager / onnx, 3), "max_abs_difference": difference})
            print(f"batch {batch}: PyTorch eager {1000 * eager / batch:.1f} ms/image, onnxruntime "
                  f"{1000 * onnx / batch:.1f} ms/image ({eager / onnx:.2f}x), max |diff| {difference:.2e}")
    record = {"benchmark": "onnx_latency", "arch": args.arch, "patch_size": args.patch_size,
              "image_size": args.image_size, "threads": threads, "warmup": args.warmup, "repeats": args.repeats,
              "results": rows, "machine": describe(torch.device("cpu"))}
    record["machine"]["onnxruntime"] = onnxruntime.__version__
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
