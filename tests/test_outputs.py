import errno
import os
import tempfile

import pytest

from dinossl.errors import DinoError
from dinossl.outputs import (
    check_writable,
    default_output_folder,
    usable_output_file,
    usable_output_folder,
    weights_label,
)


def test_a_new_or_empty_folder_is_usable_a_full_one_only_with_overwrite(tmp_path):
    assert usable_output_folder(tmp_path / "new") == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # nothing is created by the check
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "results.json").write_text("{}")
    with pytest.raises(DinoError, match="not empty.*--overwrite"):
        usable_output_folder(tmp_path / "full")
    assert usable_output_folder(tmp_path / "full", overwrite=True) == tmp_path / "full"


def test_an_existing_file_is_replaced_only_with_overwrite(tmp_path):
    target = tmp_path / "out.pth"
    target.write_text("keep")
    with pytest.raises(DinoError, match="exists"):
        usable_output_file(target)
    assert usable_output_file(target, overwrite=True) == target
    with pytest.raises(DinoError, match="is a folder"):
        usable_output_file(tmp_path)


def test_a_file_on_the_way_or_a_read_only_folder_is_refused(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(DinoError, match="is a file, not a folder"):
        check_writable(blocker / "sub" / "out")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # a user the permission bits bind (root is not bound)
            with pytest.raises(DinoError, match="not a writable folder"):
                check_writable(locked / "run")
    finally:
        locked.chmod(0o700)
    # The two refusals whatever the user: permission bits that say no, and a filesystem that
    # refuses the probe file although the bits say yes (root on a read-only mount).
    with monkeypatch.context() as patched:
        patched.setattr(os, "access", lambda path, mode: False)
        with pytest.raises(DinoError, match="not a writable folder"):
            check_writable(locked / "run")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(DinoError, match="read-only filesystem"):
        check_writable(locked / "run")


def test_default_folders_differ_by_data_and_weights(tmp_path):
    run = tmp_path / "run1"
    run.mkdir()
    (run / "checkpoint.pth").write_bytes(b"")
    a = default_output_folder("eval-knn", run / "checkpoint.pth", tmp_path / "cifar10")
    b = default_output_folder("eval-knn", run / "checkpoint.pth", tmp_path / "flowers")
    c = default_output_folder("eval-knn", "dino_vits16", tmp_path / "cifar10")
    assert str(a) == "eval-knn-cifar10-run1-checkpoint" and len({a, b, c}) == 3
    assert weights_label(run / "checkpoint.pth", "student") == "run1-checkpoint-student"
    assert weights_label("https://host/x/dino_deitsmall16_pretrain.pth") == "dino_deitsmall16_pretrain"
