"""The training set's fingerprint: equal for the same paths and sizes wherever the folder lives,
and it counts the images added and removed."""

from __future__ import annotations

import shutil

from dinossl.data.fingerprint import DataFingerprint, fingerprint_images
from dinossl.data.images import ImageFolder


def test_the_same_files_elsewhere_give_the_same_fingerprint(tmp_path, tiny_image_folder):
    copy = tmp_path / "moved"
    shutil.copytree(tiny_image_folder, copy)
    a, b = fingerprint_images(ImageFolder(tiny_image_folder)), fingerprint_images(ImageFolder(copy))
    assert a.sha256 == b.sha256 and a.images == 64 and len(a.entries) == 64


def test_changes_are_counted_and_survive_the_checkpoint_record(tmp_path, tiny_image_folder):
    folder = tmp_path / "data"
    shutil.copytree(tiny_image_folder, folder)
    before = DataFingerprint.from_record(fingerprint_images(ImageFolder(folder)).record())
    files = sorted(folder.rglob("*.png"))
    files[0].unlink()
    shutil.copy(files[1], files[1].with_name("new.png"))
    files[2].write_bytes(files[2].read_bytes() + b"\0")  # same path, another size: one removed, one added
    after = fingerprint_images(ImageFolder(folder))
    assert after.sha256 != before.sha256
    assert after.changes_since(before) == (2, 2)
    assert after.describe_change(before) == "2 images added, 2 removed (64 -> 64 images)"
    assert DataFingerprint.from_record(None) is None  # a checkpoint written before fingerprints
