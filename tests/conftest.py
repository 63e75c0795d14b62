"""Shared fixtures: real images from ../shared/data (skipped when absent) and a tiny trained run."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DINOSSL_SHARED_DATA", REPO.parent / "shared" / "data"))


def _archive(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not found: real-image tests need ../shared/data (or DINOSSL_SHARED_DATA)")
    return path


def _extract(archive: Path, dest: Path, members=None) -> Path:
    marker = dest / ".extracted"
    if not marker.exists():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, members=members(tar) if members else None, filter="data")
        marker.touch()
    return dest


@pytest.fixture(autouse=True)
def _few_threads():
    """One thread per test: small tensors run faster without threading, and tests stay predictable."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _fp32_arithmetic_restored():
    """torch's process-wide float32 arithmetic switches as they were before the test, set back
    through the long-standing API (a test that set an ``fp32_precision`` attribute would
    otherwise make every later read of ``torch.get_float32_matmul_precision()`` raise)."""
    matmul, conv_tf32, benchmark = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32,
                                    torch.backends.cudnn.benchmark)
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = conv_tf32, benchmark


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory) -> Path:
    """Full CIFAR-10 JPEG export: <dir>/train/<class>/*.jpg and <dir>/test/<class>/*.jpg."""
    dest = _extract(_archive("cifar10-jpg.tar.gz"), tmp_path_factory.mktemp("cifar10"))
    return dest / "cifar10"


@pytest.fixture(scope="session")
def cifar10_small(tmp_path_factory) -> Path:
    """A small CIFAR-10 layout <dir>/train/<class> (50 per class) and <dir>/val/<class> (10 per class)."""
    archive = _archive("cifar10-jpg.tar.gz")
    per_split = {"train": 50, "test": 10}

    def members(tar):
        counts: dict[tuple[str, str], int] = {}
        for member in tar:
            parts = Path(member.name).parts
            if len(parts) != 4 or not member.isfile():
                continue
            split, cls = parts[1], parts[2]
            if counts.get((split, cls), 0) < per_split.get(split, 0):
                counts[(split, cls)] = counts.get((split, cls), 0) + 1
                yield member

    root = _extract(archive, tmp_path_factory.mktemp("cifar10_small"), members) / "cifar10"
    if (root / "test").exists():
        (root / "test").rename(root / "val")
    return root


@pytest.fixture(scope="session")
def horses_dir(tmp_path_factory) -> Path:
    """Weizmann horses: <dir>/images/horseNNN.jpg and <dir>/masks/horseNNN.jpg."""
    dest = _extract(_archive("weizmann-horses-100.tar.gz"), tmp_path_factory.mktemp("horses"))
    return dest / "weizmann-horses"


@pytest.fixture(scope="session")
def davis_dir(tmp_path_factory) -> Path:
    """DAVIS-2016 subset: <dir>/JPEGImages/480p/<seq>/ and <dir>/Annotations/480p/<seq>/."""
    dest = _extract(_archive("davis2016-3seq.tar.gz"), tmp_path_factory.mktemp("davis"))
    return dest / "davis2016"


TINY_OVERRIDES = [
    "model.depth=2",
    "model.out_dim=256",
    "model.head_hidden_dim=128",
    "model.head_bottleneck_dim=64",
    "data.crops.num_local=2",
    "data.num_workers=0",
    "train.batch_size_per_process=16",
    "train.epochs=1",
    "train.progress_bar=false",
    "train.knn_at_end=false",
    "optim.warmup_epochs=0",
]


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory) -> Path:
    """64 small images from the built-in sample, written as PNGs in class subfolders."""
    from dinossl.data.sample import load_sample

    sample = load_sample("train")
    root = tmp_path_factory.mktemp("tiny_images")
    for index in range(64):
        image, label = sample.load(index * 97 % len(sample))
        folder = root / sample.classes[label]
        folder.mkdir(exist_ok=True)
        image.save(folder / f"{index:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_image_folder) -> Path:
    """A run folder with checkpoint.pth and teacher_backbone.{pth,safetensors} from a ~10 s training
    of a 2-block ViT-tiny/8 on 32-px images."""
    from dinossl.config import load_config
    from dinossl.train import train

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    config = load_config("vit-tiny-cifar", overrides=TINY_OVERRIDES + [f"data.path={tiny_image_folder}"])
    train(config, out)
    return out


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests skip with a reason where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch sees none on this machine")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not item.keywords: it holds folder names too
            item.add_marker(skip)
