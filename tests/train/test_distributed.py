"""Two CPU processes on gloo: equivalence with one process, single set of outputs, resume,
world-size changes and faults. Processes are started like torchrun starts them (environment
variables), without torchrun, so that a dead peer is not cleaned up by a launcher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dinossl.config import load_config
from dinossl.train import train
from dinossl.train.checkpoint import read_checkpoint
from tests.conftest import TINY_OVERRIDES

WORKER = Path(__file__).with_name("dist_worker.py")
REPO = Path(__file__).resolve().parents[2]
BATCH = 16  # global batch; 64 images -> 4 steps per epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(folder, per_process, *extra):
    kept = [o for o in TINY_OVERRIDES if not o.startswith("train.batch_size_per_process")]
    return [*kept, f"data.path={folder}", f"train.batch_size_per_process={per_process}", "model.drop_path=0.0",
            "train.log_every=1", *extra]


def _args(folder, out, per_process, *extra):
    return ["--output", str(out), *_overrides(folder, per_process, *extra)]


def _train_here(folder, out, per_process, *extra, **kwargs):
    return train(load_config("vit-tiny-cifar", overrides=_overrides(folder, per_process, *extra)), out, **kwargs)


def launch(scenario, world_size, train_args, timeout=420, ranks=None):
    """Start `world_size` ranks (or only those in `ranks`), wait, return [(returncode, stderr)]."""
    port = _free_port()
    procs = []
    for rank in ranks if ranks is not None else range(world_size):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                   LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), scenario, *train_args], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"distributed run did not end within {timeout} s")
        results.append((proc.returncode, err))
    return results


def _records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_process_with_the_global_batch(tmp_path, tiny_image_folder):
    extra = ["train.epochs=2", "loss.warmup_teacher_temp_epochs=1"]
    single = tmp_path / "single"
    _train_here(tiny_image_folder, single, BATCH, *extra)

    double = tmp_path / "double"
    results = launch("ok", 2, _args(tiny_image_folder, double, BATCH // 2, *extra, "--epochs", "2"))
    assert all(code == 0 for code, _ in results), results

    a, b = read_checkpoint(single / "checkpoint.pth"), read_checkpoint(double / "checkpoint.pth")
    torch.testing.assert_close(a["dino_loss"]["center"], b["dino_loss"]["center"], rtol=1e-4, atol=1e-5)
    for key in a["teacher"]:
        torch.testing.assert_close(a["teacher"][key], b["teacher"][key], rtol=1e-4, atol=1e-5, msg=key)
    losses_a = [r["loss"] for r in _records(single) if r["kind"] == "step"]
    losses_b = [r["loss"] for r in _records(double) if r["kind"] == "step"]
    assert len(losses_a) == len(losses_b) == 8  # one log, not one per rank
    torch.testing.assert_close(torch.tensor(losses_b), torch.tensor(losses_a), rtol=1e-4, atol=1e-5)
    assert b["world_size"] == 2 and b["global_batch"] == BATCH
    # exactly one set of outputs
    names = sorted(p.name for p in double.iterdir())
    assert names == ["checkpoint.pth", "config.yaml", "log.jsonl", "teacher_backbone.pth",
                     "teacher_backbone.safetensors", "tensorboard"]


def test_resume_with_another_world_size(tmp_path, tiny_image_folder):
    """1 process for epoch 1, then 2 processes with half the batch: same global batch, so the
    run ends where an uninterrupted single-process run ends. Then a different global batch
    resumes too, with a logged warning about the rescaled lr."""
    extra = ["train.epochs=2"]
    reference = tmp_path / "reference"
    _train_here(tiny_image_folder, reference, BATCH, *extra)

    out = tmp_path / "mixed"
    _train_here(tiny_image_folder, out, BATCH, *extra, stop_after_epochs=1)
    results = launch("ok", 2, _args(tiny_image_folder, out, BATCH // 2, *extra))
    assert all(code == 0 for code, _ in results), results
    a, b = read_checkpoint(reference / "checkpoint.pth"), read_checkpoint(out / "checkpoint.pth")
    for key in a["teacher"]:
        torch.testing.assert_close(a["teacher"][key], b["teacher"][key], rtol=1e-4, atol=1e-5, msg=key)
    assert not any(r["kind"] == "warning" for r in _records(out))

    bigger = tmp_path / "bigger"
    _train_here(tiny_image_folder, bigger, BATCH // 2, *extra, stop_after_epochs=1)
    results = launch("ok", 2, _args(tiny_image_folder, bigger, BATCH // 2, *extra))
    assert all(code == 0 for code, _ in results), results
    warnings = [r["message"] for r in _records(bigger) if r["kind"] == "warning"]
    assert len(warnings) == 1 and "global batch 16" in warnings[0] and "instead of 8" in warnings[0]
    assert read_checkpoint(bigger / "checkpoint.pth")["epoch"] == 2


def test_nan_on_one_rank_stops_all_with_one_message(tmp_path, tiny_image_folder):
    out = tmp_path / "run"
    # 2 steps per epoch: rank 1's 3rd step is step 3, the first of epoch 2
    results = launch("nan_on_rank1", 2, _args(tiny_image_folder, out, BATCH, "train.epochs=3"))
    codes = [code for code, _ in results]
    assert codes == [2, 2], results
    messages = [line for _, err in results for line in err.splitlines() if "error:" in line]
    assert len(messages) == 1 and "step 3" in messages[0] and "non-finite" in messages[0]
    checkpoint = read_checkpoint(out / "checkpoint.pth")
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["teacher"].values())


def test_dead_peer_ends_the_other_rank_with_a_message(tmp_path, tiny_image_folder):
    out = tmp_path / "run"
    started = time.monotonic()
    results = launch("die_on_rank1", 2, _args(tiny_image_folder, out, BATCH // 2, "train.epochs=2",
                                              "train.dist_timeout_s=30"), timeout=300)
    assert results[1][0] == 17
    code, err = results[0]
    assert code == 2 and "lost contact with another process" in err, err
    assert time.monotonic() - started < 300


def test_peer_that_never_arrives(tmp_path, tiny_image_folder):
    out = tmp_path / "run"
    started = time.monotonic()
    results = launch("ok", 2, _args(tiny_image_folder, out, BATCH // 2, "train.dist_timeout_s=5"),
                     ranks=[0], timeout=120)
    code, err = results[0]
    assert code == 2 and "could not join the process group" in err, err
    assert time.monotonic() - started < 120
    assert not (out / "checkpoint.pth").exists()
