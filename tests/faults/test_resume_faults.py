"""What a resume finds and what an interruption says: a data folder changed since the
checkpoint stops the resume (or, allowed, restarts the unfinished epoch); Ctrl-C names the
checkpoint that holds the work and the command that resumes it; a data-loading worker killed
as the out-of-memory killer kills stops the run with one line instead of hanging; an output
that turns read-only mid-run keeps the last checkpoint; loader workers never exceed the cores."""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from dinossl import safe_files
from dinossl.cli import main
from dinossl.safe_files import file_sha256
from dinossl.train.checkpoint import read_checkpoint, save_checkpoint
from tests.conftest import TINY_OVERRIDES
from tests.faults.conftest import finish, records, run_args, signal_at_step, start, steps_logged


def _copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _errors(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if "error:" in line]


def _train(capsys, out: Path, data: Path, *extra: str) -> tuple[int, str]:
    status = main(["train", "--output", str(out), *TINY_OVERRIDES, f"data.path={data}", *extra])
    return status, capsys.readouterr().err


def _change(data: Path, add: int, remove: int) -> None:
    """Add ``add`` images (copies of the first) and remove ``remove`` others."""
    files = sorted(data.rglob("*.png"))
    for i in range(add):
        Image.open(files[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(files[0].with_name(f"added{i}.png"))
    for path in files[1:1 + remove]:
        path.unlink()


def test_a_resume_on_a_changed_data_folder_stops_unless_allowed(tmp_path, tiny_image_folder, capsys):
    data = _copy_folder(tiny_image_folder, tmp_path / "data")
    out = tmp_path / "run"
    assert _train(capsys, out, data, "train.epochs=2", "--stop-after-epochs", "1")[0] == 0
    before = {p.name: file_sha256(p) for p in out.iterdir() if p.is_file()}
    _change(data, add=3, remove=1)
    status, err = _train(capsys, out, data, "train.epochs=2")
    errors = _errors(err)
    assert status == 2 and len(errors) == 1, errors
    assert "3 images added, 1 removed (64 -> 66 images)" in errors[0] and "--allow-data-change" in errors[0]
    assert {p.name: file_sha256(p) for p in out.iterdir() if p.is_file()} == before  # nothing touched
    status, err = _train(capsys, out, data, "train.epochs=2", "--allow-data-change")
    assert status == 0, err
    assert "3 images added, 1 removed" in err and "continuing on the new data" in err
    warned = [r for r in records(out) if r["kind"] == "warning" and "continuing on the new data" in r["message"]]
    assert len(warned) == 1
    assert read_checkpoint(out / "checkpoint.pth")["data"]["images"] == 66


def test_an_allowed_data_change_restarts_the_unfinished_epoch(tmp_path, tiny_image_folder, capsys):
    data = _copy_folder(tiny_image_folder, tmp_path / "data")
    out = tmp_path / "run"
    args = run_args(data, out, "per_image", 16, "train.checkpoint_every_steps=2")
    [(code, err)] = signal_at_step(start(args), out, 5, signal.SIGTERM)  # stops inside epoch 2
    assert code == 143, err
    stopped = read_checkpoint(out / "checkpoint.pth")
    assert stopped["epoch"] == 1 and stopped["epoch_step"] >= 1
    _change(data, add=16, remove=0)  # 80 images: 5 steps per epoch
    assert main(["train", *args, "--allow-data-change"]) == 0
    capsys.readouterr()
    steps = [(r["epoch"], r["step"]) for r in records(out) if r["kind"] == "step"]
    # epoch 1 as it was (4 steps of 16 images), epoch 2 in full and once, in steps of the new data (5 per epoch)
    assert steps == [(1, s) for s in range(1, 5)] + [(2, s) for s in range(6, 11)], steps
    assert read_checkpoint(out / "checkpoint.pth")["step"] == 10


def test_a_checkpoint_without_a_fingerprint_resumes_with_a_warning(tmp_path, tiny_image_folder, capsys):
    out = tmp_path / "run"
    assert _train(capsys, out, tiny_image_folder, "train.epochs=2", "--stop-after-epochs", "1")[0] == 0
    state = read_checkpoint(out / "checkpoint.pth")
    del state["data"]  # as an older dinossl wrote it
    save_checkpoint(state, out / "checkpoint.pth")
    status, err = _train(capsys, out, tiny_image_folder, "train.epochs=2")
    assert status == 0, err
    assert "records no fingerprint of its training data" in err


def test_ctrl_c_names_the_checkpoint_and_the_command_that_resumes(tmp_path, tiny_image_folder):
    out = tmp_path / "run"
    args = run_args(tiny_image_folder, out, "per_image", 16, "train.checkpoint_every_steps=2")
    [(code, err)] = signal_at_step(start(args), out, 3, signal.SIGINT)
    assert code == 130, err
    [line] = [line for line in err.splitlines() if line.startswith("dino train: interrupted")]
    saved = read_checkpoint(out / "checkpoint.pth")
    epoch_step = saved.get("epoch_step", 0)
    where = (f"holds step {saved['step']} (epoch {saved['epoch'] + 1}, {epoch_step} of its steps done)" if epoch_step
             else f"holds step {saved['step']} (end of epoch {saved['epoch']})")
    assert f"{out / 'checkpoint.pth'} {where}" in line, line
    command = line.split("to resume, run: ", 1)[1]
    assert shlex.split(command) == ["dino", "train", *args]


def test_ctrl_c_before_any_checkpoint_says_so(tmp_path, tiny_image_folder):
    out = tmp_path / "run"
    [(code, err)] = signal_at_step(start(run_args(tiny_image_folder, out, "per_image")), out, 1, signal.SIGINT)
    assert code == 130, err
    assert f"no checkpoint was written in {out} yet" in err or "holds step" in err, err


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("geometric", ["per_image", "device"])
def test_a_killed_loader_worker_stops_the_run_with_one_line(tmp_path, tiny_image_folder, geometric):
    """SIGKILL to one DataLoader worker, as the out-of-memory killer sends it: one line naming
    the worker and the checkpoint, exit status 1, well within the test's timeout (never a hang)."""
    out = tmp_path / "run"
    args = run_args(tiny_image_folder, out, geometric, 16, "data.num_workers=2", "train.checkpoint_every_steps=2",
                    "train.epochs=4")
    [proc] = start(args)
    deadline = time.monotonic() + 300
    while steps_logged(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers
    os.kill(workers[0], signal.SIGKILL)
    killed = time.monotonic()
    [(code, err)] = finish([proc], timeout=120)
    seconds = time.monotonic() - killed
    errors = _errors(err)
    assert code == 1 and len(errors) == 1, err
    assert f"worker pid {workers[0]} is killed by signal: Killed" in errors[0] or \
        f"worker pid {workers[0]}" in errors[0], errors
    assert re.search(r"checkpoint\.pth holds step \d+", errors[0]), errors
    read_checkpoint(out / "checkpoint.pth")  # intact
    print(f"stopped {seconds:.1f} s after the worker was killed ({geometric})")


def test_an_output_that_turns_read_only_mid_run_keeps_the_last_checkpoint(tmp_path, tiny_image_folder, capsys,
                                                                         monkeypatch):
    """The second checkpoint write finds a read-only filesystem (EROFS where the temporary file is created)."""
    out = tmp_path / "run"
    real_mkstemp = safe_files.tempfile.mkstemp
    made = {"n": 0}

    def read_only_mkstemp(*args, **kwargs):
        if kwargs.get("prefix") == ".checkpoint.pth.":  # the checkpoint itself, not its SHA-256 record
            made["n"] += 1
            if made["n"] == 2:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(safe_files.tempfile, "mkstemp", read_only_mkstemp)
    status, err = _train(capsys, out, tiny_image_folder, "train.epochs=2")
    errors = _errors(err)
    assert status == 2 and len(errors) == 1, err
    assert "its filesystem is read-only; the previous checkpoint.pth is intact" in errors[0]
    assert read_checkpoint(out / "checkpoint.pth")["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


def test_loader_workers_never_exceed_the_cores(tmp_path, tiny_image_folder, tiny_run, capsys, monkeypatch):
    """One core available, 4 workers asked: every DataLoader of training (both crop paths that use
    workers), evaluation and dedupe starts 1, and torch's too-many-workers warning never shows."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    asked = []
    real_init = torch.utils.data.DataLoader.__init__

    def spying_init(self, *args, **kwargs):
        asked.append(kwargs.get("num_workers", 0))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", spying_init)
    weights = str(tiny_run / "teacher_backbone.pth")
    commands = [
        ["train", "--output", str(tmp_path / "t1"), *TINY_OVERRIDES, f"data.path={tiny_image_folder}",
         "data.num_workers=4", "data.geometric=per_image", "train.batch_size_per_process=32"],
        ["train", "--output", str(tmp_path / "t2"), *TINY_OVERRIDES, f"data.path={tiny_image_folder}",
         "data.num_workers=4", "data.geometric=device", "train.batch_size_per_process=32"],
        ["eval", "linear", weights, "--train", str(tiny_image_folder), "--val", str(tiny_image_folder),
         "--output", str(tmp_path / "e"), "--num-workers", "4", "linear.epochs=1", "images.resize=36", "images.crop=32"],
        ["dedupe", weights, str(tiny_image_folder), "--output", str(tmp_path / "d"), "--num-workers", "4", "--imsize", "32"],
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for argv in commands:
            assert main(argv) == 0, (argv, capsys.readouterr().err)
    assert asked and max(asked) == 1, asked
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]
