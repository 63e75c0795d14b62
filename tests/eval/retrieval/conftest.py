"""Fixtures for the retrieval, copy-detection and dedupe tests: a small random-init ViT, and
benchmarks built from the real horse photos of tests/fixtures/ (see tests/conftest.py)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps


@pytest.fixture(scope="session")
def vit_weights(tmp_path_factory) -> Path:
    """A random-init ViT-tiny/16 with 2 blocks (seed 0), saved in the released layout."""
    from dinossl.models.vit import build_vit
    from dinossl.weights import write_backbone

    torch.manual_seed(0)
    model = build_vit("vit_tiny", patch_size=16, depth=2)
    return write_backbone(model.state_dict(), tmp_path_factory.mktemp("weights") / "tiny_vit.pth")


def pixel_key(path: Path) -> np.ndarray:
    """32x32 thumbnail pixels, to tell identical photos apart from distinct ones."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.float64)


@pytest.fixture(scope="session")
def horse_photos(horses_dir) -> list[Path]:
    """The Weizmann horse photos with pixel-identical repeats removed (the set holds one:
    horse018 repeats horse006), so every two of them are distinct photos."""
    kept, keys = [], []
    for path in sorted((horses_dir / "images").glob("*.jpg")):
        key = pixel_key(path)
        if any(np.abs(key - other).mean() < 2 for other in keys):
            continue
        kept.append(path)
        keys.append(key)
    return kept


def save_jpeg(image: Image.Image, path: Path, quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").save(path, "JPEG", quality=quality)
    return path


def central_crop(image: Image.Image, keep: float) -> Image.Image:
    width, height = image.size
    dx, dy = int(width * (1 - keep) / 2), int(height * (1 - keep) / 2)
    return image.crop((dx, dy, width - dx, height - dy))


# The revisited benchmark built for the tests: 12 database photos; each query is a crop of a
# database photo, with easy / hard / junk entries chosen by hand (query 2 has no hard positive).
QUERY_SOURCES = (0, 4, 9)
GROUND_TRUTH = (
    {"easy": [0, 1], "hard": [2], "junk": [3]},
    {"easy": [4], "hard": [5, 6], "junk": [7, 8]},
    {"easy": [9], "hard": [], "junk": [10]},
)


def write_gnd(path: Path, record) -> Path:
    path.write_bytes(pickle.dumps(record))
    return path


@pytest.fixture(scope="session")
def revisited_root(tmp_path_factory, horse_photos) -> Path:
    """ROOT/roxford5k/{jpg/, gnd_roxford5k.pkl} from real photos (see GROUND_TRUTH)."""
    root = tmp_path_factory.mktemp("revisited")
    folder = root / "roxford5k"
    imlist = [f"db{i:02d}" for i in range(12)]
    for name, photo in zip(imlist, horse_photos[:12]):
        with Image.open(photo) as image:
            save_jpeg(image, folder / "jpg" / f"{name}.jpg")
    qimlist, gnd = [], []
    for q, (source, truth) in enumerate(zip(QUERY_SOURCES, GROUND_TRUTH)):
        with Image.open(horse_photos[source]) as image:
            query = central_crop(image.convert("RGB"), 0.8)
        save_jpeg(query, folder / "jpg" / f"query{q}.jpg")
        qimlist.append(f"query{q}")
        width, height = query.size
        gnd.append({**truth, "bbx": [width * 0.1, height * 0.1, width * 0.9, height * 0.9]})
    write_gnd(folder / "gnd_roxford5k.pkl", {"imlist": imlist, "qimlist": qimlist, "gnd": gnd})
    return root


def strong_edits(image: Image.Image) -> dict[str, Image.Image]:
    """The Copydays kinds of strong edit, each applied to ``image``."""
    image = image.convert("RGB")
    width, height = image.size
    texted = image.copy()
    draw = ImageDraw.Draw(texted)
    draw.rectangle((width // 10, height // 10, width // 3, height // 4), fill=(220, 30, 30))  # a logo
    draw.text((width // 8, height * 2 // 3), "COPY (c) 2021", fill=(255, 255, 0))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=10)
    return {
        "crop": central_crop(image, 0.6),
        "rotation": image.rotate(20, resample=Image.Resampling.BICUBIC, expand=True),
        "jpeg10": Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"),
        "blur": image.filter(ImageFilter.GaussianBlur(3)),
        "text": texted,
        "colour": ImageEnhance.Color(ImageOps.autocontrast(image)).enhance(0.2).point(lambda v: min(255, v + 40)),
    }


@pytest.fixture(scope="session")
def copydays_set(tmp_path_factory, horse_photos) -> Path:
    """BASE/copydays/original (6 photos), .../strong (one edit of each kind, and a second copy
    of some originals), .../jpegqual/10 and .../crops/50 (one per original); BASE/distractors
    (10 other photos) and BASE/whitening (20 others)."""
    base = tmp_path_factory.mktemp("copydays_set")
    root = base / "copydays"
    originals = horse_photos[20:26]
    kinds = ("crop", "rotation", "jpeg10", "blur", "text", "colour")
    for i, (photo, kind) in enumerate(zip(originals, kinds)):
        stem = f"{2000 + i}"
        with Image.open(photo) as image:
            image = image.convert("RGB")
            save_jpeg(image, root / "original" / f"{stem}00.jpg")
            save_jpeg(strong_edits(image)[kind], root / "strong" / f"{stem}00_{kind}.jpg")
            if i % 2 == 0:  # a second strong copy of some originals
                save_jpeg(strong_edits(image)["blur"], root / "strong" / f"{stem}01_blur.jpg")
            save_jpeg(image, root / "jpegqual" / "10" / f"{stem}00.jpg", quality=10)
            save_jpeg(central_crop(image, 0.5), root / "crops" / "50" / f"{stem}00.jpg")
    for i, photo in enumerate(horse_photos[30:40]):
        with Image.open(photo) as image:
            save_jpeg(image, base / "distractors" / f"d{i:02d}.jpg")
    for i, photo in enumerate(horse_photos[40:60]):
        with Image.open(photo) as image:
            save_jpeg(image, base / "whitening" / f"w{i:02d}.jpg")
    return base
