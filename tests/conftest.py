"""Shared fixtures: real images (the small set in tests/fixtures/, and the larger shared set where
one is present), a tiny trained run, and the skip census that tests/test_suite_skips.py reads."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # real images kept in the repository (see its README.md)
SHARED_DATA = Path(os.environ.get("DINOSSL_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED_DATA_FIXTURE = "shared_data"  # tests needing the larger set ask for it (directly or through a fixture)


def _fixture_folder(name: str) -> Path:
    """tests/fixtures/<name>; a missing folder is a broken checkout, not a reason to skip."""
    path = FIXTURES / name
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: the repository's real-image fixtures are incomplete")
    return path


def _archive(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not found: this test needs the larger shared data set (DINOSSL_SHARED_DATA)")
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
def shared_data(tmp_path_factory):
    """Factory: archive name in the shared data set (e.g. ``"cifar10-jpg.tar.gz"``) -> the folder
    it was extracted into; skips when the set is absent. Only for tests that need more images than
    tests/fixtures/ holds: the skip census counts every test that asks for it."""
    extracted: dict[str, Path] = {}

    def extract(name: str) -> Path:
        if name not in extracted:
            extracted[name] = _extract(_archive(name), tmp_path_factory.mktemp(name.split(".")[0]))
        return extracted[name]

    return extract


@pytest.fixture(scope="session")
def cifar10_dir(shared_data) -> Path:
    """The full CIFAR-10 JPEG export (shared set): <dir>/train/<class>/*.jpg and <dir>/test/<class>/*.jpg."""
    return shared_data("cifar10-jpg.tar.gz") / "cifar10"


@pytest.fixture(scope="session")
def cifar10_fixture() -> Path:
    """The repository's CIFAR-10 images: <dir>/train/<class>/ and <dir>/test/<class>/, the first
    50 images of each class and split of the shared export."""
    return _fixture_folder("cifar10")


@pytest.fixture(scope="session")
def cifar10_small(tmp_path_factory, cifar10_fixture) -> Path:
    """A small CIFAR-10 layout <dir>/train/<class> (50 per class) and <dir>/val/<class> (10 per class,
    from the test split), a copy tests may write next to."""
    root = tmp_path_factory.mktemp("cifar10_small") / "cifar10"
    shutil.copytree(cifar10_fixture / "train", root / "train")
    for folder in sorted((cifar10_fixture / "test").iterdir()):
        (root / "val" / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:10]:
            shutil.copy(image, root / "val" / folder.name / image.name)
    return root


@pytest.fixture(scope="session")
def horses_dir() -> Path:
    """Weizmann horses (61 photos, horse001-horse061): <dir>/images/horseNNN.jpg and <dir>/masks/horseNNN.jpg."""
    return _fixture_folder("weizmann-horses")


@pytest.fixture(scope="session")
def davis_dir() -> Path:
    """DAVIS-2016, sequence car-shadow cut to its first 15 frames: <dir>/JPEGImages/480p/car-shadow/
    and <dir>/Annotations/480p/car-shadow/."""
    return _fixture_folder("davis2016")


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


# The skip census: with DINOSSL_SKIP_CENSUS=FILE, ``pytest --collect-only`` writes to FILE, as JSON
# {node id: reason}, every test that would skip before its body runs: skip / skipif markers (the
# gpu one above included), modules skipped at collection (importorskip), and tests that ask for
# the shared data set while it is absent. tests/test_suite_skips.py reads it.
SKIP_CENSUS = "DINOSSL_SKIP_CENSUS"
_collection_skips: dict[str, str] = {}


def _planned_skip(item: pytest.Item) -> str | None:
    """Why ``item`` would skip before its body runs, or None."""
    for mark in item.iter_markers("skip"):
        return str(mark.kwargs.get("reason", mark.args[0] if mark.args else "unconditional skip"))
    for mark in item.iter_markers("skipif"):
        conditions = mark.args or (mark.kwargs["condition"],)
        if any(isinstance(c, str) or bool(c) for c in conditions):  # a string condition counts as skipping
            return str(mark.kwargs.get("reason", f"skipif {conditions}"))
    if SHARED_DATA_FIXTURE in getattr(item, "fixturenames", ()) and not SHARED_DATA.is_dir():
        return f"needs the larger shared data set: {SHARED_DATA} not found"
    return None


def pytest_collectreport(report):
    if os.environ.get(SKIP_CENSUS) and report.skipped:
        longrepr = report.longrepr
        _collection_skips[report.nodeid] = str(longrepr[-1] if isinstance(longrepr, tuple) else longrepr)


def pytest_collection_finish(session):
    path = os.environ.get(SKIP_CENSUS)
    if path:
        planned = {item.nodeid: _planned_skip(item) for item in session.items}
        census = {node: reason for node, reason in planned.items() if reason is not None}
        Path(path).write_text(json.dumps({"collected": len(session.items),
                                          "skipped": {**_collection_skips, **census}}, indent=1))
