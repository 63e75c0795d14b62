"""Build src/dinossl/data/sample/cifar10_sample.npz from the CIFAR-10 JPEG archive.

Usage: python scripts/make_sample.py ../shared/data/cifar10-jpg.tar.gz [--train-per-class 500]
       [--heldout-per-class 100]

Takes the first N files (sorted by name) of each class from CIFAR-10's train split for the
sample's train part and the first M of its test split for the held-out part, and stores the
original JPEG bytes (no re-encoding).
"""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--heldout-per-class", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("src/dinossl/data/sample/cifar10_sample.npz"))
    args = parser.parse_args()

    wanted: dict[tuple[str, str], list[str]] = {}
    with tarfile.open(args.archive) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")}
        for part, per_class in (("train", args.train_per_class), ("test", args.heldout_per_class)):
            for cls in CLASSES:
                names = sorted(n for n in members if f"/{part}/{cls}/" in f"/{n}")
                if len(names) < per_class:
                    raise SystemExit(f"only {len(names)} {part}/{cls} images in {args.archive}")
                wanted[(part, cls)] = names[:per_class]
        blobs, labels, split = [], [], []
        for (part, cls), names in wanted.items():
            for name in names:
                blobs.append(tar.extractfile(members[name]).read())
                labels.append(CLASSES.index(cls))
                split.append(0 if part == "train" else 1)
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    jpeg = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        jpeg=jpeg,
        offsets=offsets,
        labels=np.asarray(labels, dtype=np.int64),
        split=np.asarray(split, dtype=np.uint8),
        classes=np.asarray(CLASSES),
    )
    print(f"wrote {args.out}: {len(blobs)} images, {args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
