"""Every `dino` command: an output that cannot be written, a full disk, and bad settings each
give one line and exit status 2, before any image is decoded or weights are downloaded, and
nothing is written."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from dinossl.cli import main
from dinossl.train import checkpoint as checkpoint_module
from dinossl.train.checkpoint import read_checkpoint
from dinossl.weights import registry
from tests.conftest import TINY_OVERRIDES

RELEASED = "dino_vits16"  # a released name: a download would be the first thing done with it


def _commands(data: Path, image: Path) -> dict[str, list[str]]:
    """Each command's arguments, all inputs valid, without --output."""
    cls = next(p for p in sorted(data.iterdir()) if p.is_dir())
    return {
        "train": ["train", *TINY_OVERRIDES, f"data.path={data}"],
        "eval knn": ["eval", "knn", RELEASED, "--train", str(data), "--val", str(data)],
        "eval linear": ["eval", "linear", RELEASED, "--train", str(data), "--val", str(data)],
        "eval finetune": ["eval", "finetune", RELEASED, "--train", str(data), "--val", str(data)],
        "eval masks": ["eval", "masks", RELEASED, "--images", str(cls), "--masks", str(cls)],
        "attention": ["attention", RELEASED, str(image)],
        "export": ["export", RELEASED],
        "dedupe": ["dedupe", RELEASED, str(data)],
    }


@pytest.fixture
def spies(monkeypatch):
    """Counts image decodes and weight downloads."""
    seen = {"open": 0, "download": 0}
    real_open = Image.open

    def counting_open(*args, **kwargs):
        seen["open"] += 1
        return real_open(*args, **kwargs)

    def no_download(url, destination, *args, **kwargs):
        seen["download"] += 1
        raise registry.DownloadError("no download in this test")

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(registry, "download", no_download)
    return seen


def _run(capsys, argv):
    status = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return status, err


def _errors(err: list[str]) -> list[str]:
    """The error lines (training logs its progress on stderr too); no traceback allowed."""
    assert not any("Traceback" in line for line in err), err
    return [line for line in err if "error:" in line]


def _read_only_mount(path: Path):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        return None
    return path


@pytest.mark.parametrize("where", ["under_a_file", "read_only_filesystem", "proc"])
def test_an_unwritable_output_is_one_line_before_any_decode_or_download(tmp_path, tiny_image_folder, capsys, spies,
                                                                       where):
    image = next(tiny_image_folder.rglob("*.png"))
    mounted = None
    if where == "under_a_file":
        (tmp_path / "a-file").write_text("x")
        output = tmp_path / "a-file" / "out"
    elif where == "proc":
        output = Path("/proc/dinossl-test/out")
    else:
        mounted = _read_only_mount(tmp_path / "ro")
        if mounted is None:
            pytest.skip("cannot mount a read-only tmpfs here (needs root)")
        output = mounted / "out"
    try:
        for name, argv in _commands(tiny_image_folder, image).items():
            status, err = _run(capsys, [*argv, "--output", str(output)])
            assert status == 2 and len(err) == 1 and err[0].startswith(f"dino {name}: error: cannot write"), (name, err)
            assert spies == {"open": 0, "download": 0}, name
            assert not output.exists()
    finally:
        if mounted is not None:
            subprocess.run(["umount", str(mounted)], check=False)


BAD_SETTINGS = {
    "train": ["train.device=foo", "train.epochs=99999999999999999999", "train.checkpoint_every_steps=-1",
              "optim.base_lr=-1", "model.nope=1", "nope.x=1", "data.geometric=sideways", "--device=foo"],
    "eval knn": ["nope.x=1", "knn.nope=1", "--device=foo"],
    "eval linear": ["nope.x=1", "--device=foo"],
    "eval finetune": ["nope.x=1", "--device=foo"],
    "eval masks": ["nope.x=1", "masks.nope=1", "--device=foo"],
    "attention": ["nope.x=1", "attention.nope=1", "--device=foo"],
    "export": ["--format=gif"],
    "dedupe": ["nope.x=1", "dedupe.nope=1", "--device=foo"],
}


def test_every_command_with_every_bad_setting_is_one_line_and_writes_nothing(tmp_path, tiny_image_folder, capsys,
                                                                             spies, monkeypatch):
    image = next(tiny_image_folder.rglob("*.png"))
    monkeypatch.chdir(tmp_path)
    for name, argv in _commands(tiny_image_folder, image).items():
        for bad in BAD_SETTINGS[name]:
            output = tmp_path / "out"
            try:
                status, err = _run(capsys, [*argv, "--output", str(output), bad])
            except SystemExit as exc:  # argparse's own refusal (a choice it does not know)
                status, err = exc.code, [line for line in capsys.readouterr().err.splitlines()
                                         if line.startswith("dino")]
            assert status == 2 and len(err) == 1 and "error:" in err[0], (name, bad, err)
            assert sorted(p.name for p in tmp_path.iterdir()) == [], (name, bad)
            assert spies["download"] == 0, (name, bad)


def test_a_full_disk_while_training_is_one_line_and_keeps_the_last_checkpoint(tmp_path, tiny_image_folder, capsys,
                                                                             monkeypatch):
    """A write hook raising ENOSPC in the second checkpoint write."""
    out = tmp_path / "run"
    real_save = torch.save
    saves = {"n": 0}

    def filling_save(obj, f, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2 and hasattr(f, "write"):
            f.write(b"PK\x03\x04 the start of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", filling_save)
    status, err = _run(capsys, ["train", "--output", str(out), *TINY_OVERRIDES, f"data.path={tiny_image_folder}",
                                "train.epochs=2"])
    err = _errors(err)
    assert status == 2 and len(err) == 1 and "no space left" in err[0] and "previous checkpoint.pth is intact" in err[0]
    assert read_checkpoint(out / "checkpoint.pth")["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


def test_a_really_full_filesystem_while_training(tmp_path, tiny_image_folder, capsys):
    """A size-limited tmpfs that holds one checkpoint but not a second beside it."""
    probe = tmp_path / "probe"
    assert main(["train", "--output", str(probe), *TINY_OVERRIDES, f"data.path={tiny_image_folder}",
                 "train.progress_bar=false"]) == 0
    size = (probe / "checkpoint.pth").stat().st_size
    small = tmp_path / "small"
    small.mkdir()
    limit = int(size * 1.5) + 256 * 1024  # one checkpoint, config, log and TensorBoard files; not two checkpoints
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={limit}", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root)")
    try:
        capsys.readouterr()
        out = small / "run"
        status, err = _run(capsys, ["train", "--output", str(out), *TINY_OVERRIDES, f"data.path={tiny_image_folder}",
                                    "train.epochs=3"])
        err = _errors(err)
        assert status == 2 and len(err) == 1 and "no space left" in err[0], err
        assert read_checkpoint(out / "checkpoint.pth")["epoch"] >= 1
        assert not list(out.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(small)], check=False)
