"""One process per output folder: a second `dino train` (or study, or evaluation) on a folder in
use stops with one line naming the first one's pid and host, and the first run loses nothing; a
lock left by a killed run is taken over with a warning; locks of other hosts are judged by
their heartbeat; a requeued SLURM job takes over its own earlier lock; under torchrun only rank 0
holds the lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dinossl.cli import main
from dinossl.outputs import LOCK_NAME
from dinossl.runtime import folder_lock as folder_lock_module
from dinossl.runtime.folder_lock import FolderInUse, FolderLock, LockRecord
from dinossl.train.checkpoint import read_checkpoint
from tests.conftest import TINY_OVERRIDES
from tests.faults.conftest import finish, records, run_args, start, steps_logged
from tests.process_ranks import REPO, child_env, start_ranks, wait_all

LOCK_WORKER = Path(__file__).with_name("lock_worker.py")


def _wait_for(condition, procs, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


def test_a_second_training_on_a_folder_in_use_stops_and_the_first_loses_nothing(tmp_path, tiny_image_folder, capsys):
    out = tmp_path / "run"
    args = run_args(tiny_image_folder, out, "per_image")
    first = start(args)
    _wait_for(lambda: steps_logged(out) >= 1, first)
    status = main(["train", *args])  # the same command, while the first runs
    errors = _error_lines(capsys)
    assert status == 2 and len(errors) == 1, errors
    assert f"pid {first[0].pid} on host {socket.gethostname()}" in errors[0] and "in use by `dino train`" in errors[0]
    [(code, err)] = finish(first)
    assert code == 0, err
    steps = [r["step"] for r in records(out) if r["kind"] == "step"]
    assert steps == list(range(1, 9)), steps  # every record of both epochs, none lost or repeated
    assert [r["epoch"] for r in records(out) if r["kind"] == "epoch"] == [1, 2]
    assert read_checkpoint(out / "checkpoint.pth")["step"] == 8
    assert not (out / LOCK_NAME).exists()


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_warning(tmp_path, tiny_image_folder, capsys):
    out = tmp_path / "run"
    args = run_args(tiny_image_folder, out, "per_image", 16, "train.checkpoint_every_steps=2")
    killed = start(args)
    _wait_for(lambda: steps_logged(out) >= 3, killed)
    killed[0].send_signal(signal.SIGKILL)
    finish(killed)
    record = LockRecord.parse((out / LOCK_NAME).read_bytes())
    assert record is not None and record.pid == killed[0].pid
    assert main(["train", *args]) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock left by `dino train` (pid {killed[0].pid} on host {socket.gethostname()}" in err
    assert not (out / LOCK_NAME).exists()
    assert [r["step"] for r in records(out) if r["kind"] == "step"] == list(range(1, 9))


def _hold_in_child(folder: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A child process that takes the folder's lock, says so on stdout and holds it until killed."""
    code = ("import sys, time; from dinossl.runtime.folder_lock import FolderLock; "
            "lock = FolderLock(sys.argv[1], 'holder'); lock.acquire(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], env={**child_env(), **(env or {})}, cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _write_record(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    record = {"host": socket.gethostname(), "pid": os.getpid(), "command": "dino train", "started": now,
              "heartbeat": now, "slurm_job": None, "slurm_restart": None, **fields}
    (folder / LOCK_NAME).write_text(json.dumps(record))


def test_a_live_holder_on_this_host_is_refused_even_with_the_slurm_job_of_another(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    holder = _hold_in_child(folder, {"SLURM_JOB_ID": "41", "SLURM_RESTART_COUNT": "0"})
    try:
        monkeypatch.setenv("SLURM_JOB_ID", "42")
        with pytest.raises(FolderInUse, match=f"pid {holder.pid} on host {socket.gethostname()}, SLURM job 41"):
            FolderLock(folder, "dino train").acquire()
        monkeypatch.setenv("SLURM_JOB_ID", "41")  # the same job, the same start: two commands of one job
        monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
        with pytest.raises(FolderInUse):
            FolderLock(folder, "dino train").acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_requeued_slurm_job_takes_over_its_own_earlier_lock(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "out"
    holder = _hold_in_child(folder, {"SLURM_JOB_ID": "41", "SLURM_RESTART_COUNT": "0"})
    try:  # the earlier start still holds the record lock (a node whose lock the server keeps until its lease ends)
        monkeypatch.setenv("SLURM_JOB_ID", "41")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        with FolderLock(folder, "dino train"):
            assert LockRecord.parse((folder / LOCK_NAME).read_bytes()).pid == os.getpid()
        assert "earlier run of this SLURM job" in caplog.text
    finally:
        holder.kill()
        holder.wait()


def test_locks_of_another_host_are_judged_by_their_heartbeat(tmp_path, caplog):
    folder = tmp_path / "out"
    _write_record(folder, host="node-elsewhere", pid=1234, heartbeat=time.time() - 30)
    with pytest.raises(FolderInUse, match=r"pid 1234 on host node-elsewhere.*heartbeat was 3\d s ago"):
        FolderLock(folder, "dino train").acquire()
    _write_record(folder, host="node-elsewhere", pid=1234, heartbeat=time.time() - folder_lock_module.STALE_AFTER_S - 5)
    with FolderLock(folder, "dino train"):
        pass
    assert "taking over the lock of `dino train` (pid 1234 on host node-elsewhere" in caplog.text
    assert not (folder / LOCK_NAME).exists()


def test_the_holder_keeps_its_heartbeat_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_lock_module, "HEARTBEAT_S", 0.05)
    folder = tmp_path / "out"
    with FolderLock(folder, "dino train"):
        first = LockRecord.parse((folder / LOCK_NAME).read_bytes()).heartbeat
        time.sleep(0.5)
        assert LockRecord.parse((folder / LOCK_NAME).read_bytes()).heartbeat > first
    assert not folder.exists()  # created by the lock, nothing else written: removed with it


def test_where_the_filesystem_has_no_record_locks_the_pid_decides(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(folder_lock_module, "_try_record_lock", lambda fd: None)
    folder = tmp_path / "out"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _write_record(folder, pid=sleeper.pid)
        with pytest.raises(FolderInUse, match=f"pid {sleeper.pid}"):
            FolderLock(folder, "dino train").acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with FolderLock(folder, "dino train"):  # that pid no longer runs
        pass
    assert f"pid {sleeper.pid} on host" in caplog.text and "no longer runs" in caplog.text


def test_under_torchrun_only_rank_0_holds_the_lock_and_every_rank_hears_a_refusal(tmp_path):
    folder = tmp_path / "out"
    results = wait_all(start_ranks(LOCK_WORKER, [str(folder)], 2), 120, "lock ranks")
    assert [code for code, _ in results] == [0, 0], results
    assert "rank 0 holds: True" in results[0][1] and "rank 1 holds: False" in results[1][1]
    holder = _hold_in_child(folder)
    try:
        results = wait_all(start_ranks(LOCK_WORKER, [str(folder)], 2), 120, "lock ranks")
    finally:
        holder.kill()
        holder.wait()
    assert [code for code, _ in results] == [2, 2], results
    assert f"pid {holder.pid} on host" in results[0][1]
    assert "pid" not in results[1][1] and "error" not in results[1][1]  # rank 0 alone prints the refusal


def test_every_resumable_command_on_a_folder_in_use_stops_with_one_line(tmp_path, tiny_image_folder, tiny_run,
                                                                          capsys):
    """`dino study`, `dino eval linear` (its probe checkpoint), `dino dedupe` (its index) and
    `dino embed` (its shards), each on a folder another process holds."""
    weights = str(tiny_run / "teacher_backbone.pth")
    commands = {
        "study": ["study", "collapse", *TINY_OVERRIDES, f"data.path={tiny_image_folder}", "--no-figure"],
        "eval": ["eval", "linear", weights, "--train", str(tiny_image_folder), "--val", str(tiny_image_folder),
                 "linear.epochs=1", "images.resize=36", "images.crop=32"],
        "dedupe": ["dedupe", weights, str(tiny_image_folder), "--imsize", "32"],
        "embed": ["embed", weights, "--data", str(tiny_image_folder)],
    }
    for name, argv in commands.items():
        out = tmp_path / name
        holder = _hold_in_child(out)
        try:
            status = main([*argv, "--output", str(out)])
            errors = _error_lines(capsys)
        finally:
            holder.kill()
            holder.wait()
        assert status == 2 and len(errors) == 1 and f"pid {holder.pid} on host" in errors[0], (name, errors)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME], name  # the holder's; nothing else written
