import numpy as np
import pytest
from PIL import Image

from dinossl.data import ImageFolder, UnreadableImage
from dinossl.data.loader import MultiCropDataset, collate_crops
from dinossl.errors import DataError


def _save(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 100, dtype=np.uint8)).save(path)


def test_class_subfolders_are_labels(tmp_path):
    _save(tmp_path / "dog" / "a.png")
    _save(tmp_path / "cat" / "b.jpg")
    _save(tmp_path / "cat" / "nested" / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    folder = ImageFolder(tmp_path)
    assert folder.classes == ["cat", "dog"]
    assert len(folder) == 3 and list(folder.labels) == [0, 0, 1] and folder.labeled


def test_flat_folder_is_unlabeled(tmp_path):
    for i in range(3):
        _save(tmp_path / f"{i}.png")
    folder = ImageFolder(tmp_path)
    assert len(folder) == 3 and folder.classes == [] and list(folder.labels) == [-1, -1, -1]
    image, label = folder.load(0)
    assert image.mode == "RGB" and label == -1


def test_corrupt_image_is_skipped_not_fatal(tmp_path):
    _save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"definitely not a jpeg")
    folder = ImageFolder(tmp_path)
    bad = [i for i, f in enumerate(folder.files) if f.name == "bad.jpg"][0]
    with pytest.raises(UnreadableImage):
        folder.load(bad)
    ds = MultiCropDataset(folder, lambda image: [np.zeros(1)], seed=0)
    assert ds[(bad, 0)] is None
    crops, labels, skipped = collate_crops([ds[(bad, 0)], None])
    assert crops == [] and skipped == 2


@pytest.mark.parametrize("case", ["missing", "empty", "file", "no_images", "all_corrupt"])
def test_bad_folders_give_clear_errors(tmp_path, case):
    root = tmp_path / "data"
    if case == "empty":
        root.mkdir()
    elif case == "file":
        root.write_text("x")
    elif case == "no_images":
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "readme.txt").write_text("x")
    elif case == "all_corrupt":
        root.mkdir()
        (root / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError) as info:
        ImageFolder(root)
    assert str(root) in str(info.value)
