"""The odd-image zoo in a training folder: every file is decoded, or skipped and counted, or
(not a regular file) never listed; nothing hangs, crashes or prints a traceback."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from dinossl.cli import main
from dinossl.data.images import ImageFolder, UnreadableImage
from tests.conftest import TINY_OVERRIDES

UNREADABLE = ("truncated.jpg", "zero.jpg", "text.jpg", "bomb.png")  # skipped and counted


def _zoo(root, good_folder):
    cls = root / "zoo"
    cls.mkdir(parents=True)
    for index, path in enumerate(sorted(good_folder.rglob("*.png"))[:16]):
        shutil.copy(path, cls / f"good{index:02d}.png")
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG")
    (cls / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (cls / "zero.jpg").write_bytes(b"")
    (cls / "text.jpg").write_text("this is not a picture\n")
    photo.convert("CMYK").save(cls / "cmyk.jpg")
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 28).astype(np.uint16)).save(cls / "gray16.png")
    photo.convert("RGBA").save(cls / "rgba.png")
    palette = photo.convert("P")
    palette.save(cls / "palette.png", transparency=0)
    photo.resize((1, 1)).save(cls / "one_pixel.png")
    photo.resize((2000, 2000)).save(cls / "huge.png")
    Image.new("L", (14000, 14000)).save(cls / "bomb.png")  # ~190 KB on disk, 196 Mpx decoded
    photo.save(cls / "unreadable.png")
    os.chmod(cls / "unreadable.png", 0)  # unreadable for a normal user (root reads it anyway)
    os.mkfifo(cls / "fifo.png")  # opening it would block: must never be opened
    os.symlink("loop.png", cls / "loop.png")  # a symlink loop
    return root


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, tiny_image_folder):
    return _zoo(tmp_path_factory.mktemp("zoo") / "data", tiny_image_folder)


def test_training_on_the_zoo_skips_and_counts_what_cannot_be_decoded(tmp_path, zoo, capsys):
    data = zoo
    out = tmp_path / "run"
    listed = 16 + 11  # good images + zoo files that are regular files
    status = main(["train", "--output", str(out), *TINY_OVERRIDES, f"data.path={data}", "data.geometric=per_image",
                   f"train.batch_size_per_process={listed // 3}", "train.log_every=1"])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "Traceback" not in err and "Warning" not in err
    epoch = next(json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if '"kind": "epoch"' in l)
    readable = os.access(data / "zoo" / "unreadable.png", os.R_OK)  # root reads it anyway
    assert epoch["skipped_images"] == len(UNREADABLE) + (0 if readable else 1)


def test_batched_crops_refuse_a_zoo_of_sizes_in_one_line(tmp_path, zoo, capsys):
    data = zoo
    out = tmp_path / "run"
    status = main(["train", "--output", str(out), *TINY_OVERRIDES, f"data.path={data}", "data.geometric=batched",
                   "data.photometric=device"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "one size" in err[0]
    assert not (out / "checkpoint.pth").exists()


def test_odd_but_valid_images_decode_to_8_bit_rgb(zoo):
    folder = ImageFolder(zoo)
    names = [p.name for p in folder.files]
    assert "fifo.png" not in names and "loop.png" not in names  # not regular files: never opened
    for name in ("cmyk.jpg", "gray16.png", "rgba.png", "palette.png", "one_pixel.png", "huge.png"):
        image, _ = folder.load(names.index(name))
        assert image.mode == "RGB", name
    gray, _ = folder.load(names.index("gray16.png"))
    assert 100 < np.asarray(gray).mean() < 160  # 16-bit values scaled, not clipped to white
    for name in UNREADABLE:
        with pytest.raises(UnreadableImage):
            folder.load(names.index(name))
