"""Two CPU processes on gloo: equivalence with one process, single set of outputs, resume,
world-size changes and faults. Processes are started like torchrun starts them (environment
variables), without torchrun, so that a dead peer is not cleaned up by a launcher."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from dinossl.config import load_config
from dinossl.train import train
from dinossl.train.checkpoint import read_checkpoint
from tests.conftest import TINY_OVERRIDES
from tests.process_ranks import start_ranks, wait_all

WORKER = Path(__file__).with_name("dist_worker.py")
BATCH = 16  # global batch; 64 images -> 4 steps per epoch


def _overrides(folder, per_process, *extra):
    """fp32: the processes' results agree with one process's to float32 rounding, which bf16 (the
    CPU's "auto" where it has native bf16) would widen by how the batch is split."""
    kept = [o for o in TINY_OVERRIDES if not o.startswith("train.batch_size_per_process")]
    return [*kept, f"data.path={folder}", f"train.batch_size_per_process={per_process}", "model.drop_path=0.0",
            "train.log_every=1", "train.precision=fp32", *extra]


def _args(folder, out, per_process, *extra):
    return ["--output", str(out), *_overrides(folder, per_process, *extra)]


def _train_here(folder, out, per_process, *extra, **kwargs):
    return train(load_config("vit-tiny-cifar", overrides=_overrides(folder, per_process, *extra)), out, **kwargs)


def launch(scenario, world_size, train_args, timeout=420, ranks=None):
    """Start `world_size` ranks (or only those in `ranks`), wait, return [(returncode, stderr)]."""
    return wait_all(start_ranks(WORKER, [scenario, *train_args], world_size, ranks), timeout, "distributed run")


def _records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _assert_close_states(a, b):
    torch.testing.assert_close(a["dino_loss"]["center"], b["dino_loss"]["center"], rtol=1e-4, atol=1e-5)
    for key in a["teacher"]:
        torch.testing.assert_close(a["teacher"][key], b["teacher"][key], rtol=1e-4, atol=1e-5, msg=key)
    assert a["epoch"] == b["epoch"]


def _losses(out):
    return torch.tensor([r["loss"] for r in _records(out) if r["kind"] == "step"])


def test_two_processes_match_one_process_write_once_and_resume(tmp_path, tiny_image_folder):
    """2 processes x B/2 = 1 process x B: same losses, center and teacher, epoch after epoch;
    one set of outputs; a 2-process run resumes its own checkpoint, and a 1-process run resumes a
    2-process checkpoint (same global batch) to the same end."""
    extra = ["train.epochs=2", "loss.warmup_teacher_temp_epochs=1"]
    reference = tmp_path / "reference"
    _train_here(tiny_image_folder, reference, BATCH, *extra, stop_after_epochs=1)
    reference_epoch1 = read_checkpoint(reference / "checkpoint.pth")
    _train_here(tiny_image_folder, reference, BATCH, *extra)
    reference_epoch2 = read_checkpoint(reference / "checkpoint.pth")

    double = tmp_path / "double"
    results = launch("ok", 2, _args(tiny_image_folder, double, BATCH // 2, *extra) + ["--stop-after-epochs", "1"])
    assert all(code == 0 for code, _ in results), results
    after_epoch1 = read_checkpoint(double / "checkpoint.pth")
    _assert_close_states(reference_epoch1, after_epoch1)
    assert after_epoch1["world_size"] == 2 and after_epoch1["global_batch"] == BATCH
    assert sorted(p.name for p in double.iterdir()) == ["checkpoint.pth", "checkpoint.pth.sha256", "config.yaml",
                                                       "log.jsonl", "tensorboard"]
    mixed = tmp_path / "mixed"
    shutil.copytree(double, mixed)

    results = launch("ok", 2, _args(tiny_image_folder, double, BATCH // 2, *extra))
    assert all(code == 0 for code, _ in results), results
    _assert_close_states(reference_epoch2, read_checkpoint(double / "checkpoint.pth"))
    torch.testing.assert_close(_losses(double), _losses(reference), rtol=1e-4, atol=1e-5)
    assert len(_losses(double)) == 8  # one log line per step, not one per rank
    assert sorted(p.name for p in double.iterdir()) == ["checkpoint.pth", "checkpoint.pth.sha256", "config.yaml",
                                                       "log.jsonl", "teacher_backbone.pth", "teacher_backbone.safetensors",
                                                       "tensorboard"]
    assert len(list((double / "tensorboard").iterdir())) == 2  # one event file per invocation of rank 0

    _train_here(tiny_image_folder, mixed, BATCH, *extra)  # world size 2 -> 1, same global batch
    _assert_close_states(reference_epoch2, read_checkpoint(mixed / "checkpoint.pth"))
    assert not any(r["kind"] == "warning" for r in _records(mixed))


def test_resume_with_another_global_batch_warns_and_rescales(tmp_path, tiny_image_folder):
    out = tmp_path / "run"
    _train_here(tiny_image_folder, out, BATCH // 2, "train.epochs=2", stop_after_epochs=1)
    _train_here(tiny_image_folder, out, BATCH, "train.epochs=2")
    warnings = [r["message"] for r in _records(out) if r["kind"] == "warning"]
    assert len(warnings) == 1 and "global batch 16" in warnings[0] and "instead of 8" in warnings[0]
    steps = [r for r in _records(out) if r["kind"] == "step"]
    assert [r["epoch"] for r in steps] == [1] * 8 + [2] * 4  # 64 images: 8 steps of 8, then 4 of 16
    base_lr = load_config("vit-tiny-cifar").optim.base_lr
    assert max(r["lr"] for r in steps if r["epoch"] == 2) <= base_lr * BATCH / 256 + 1e-12
    assert read_checkpoint(out / "checkpoint.pth")["global_batch"] == BATCH


def test_batchnorm_is_synchronised_on_gpus_only(monkeypatch):
    from torch import nn

    from dinossl.runtime.distributed import synchronize_batchnorm

    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert synchronize_batchnorm(model, torch.device("cpu")) is model  # gloo: SyncBatchNorm needs CUDA
    converted = synchronize_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), torch.device("cuda", 0))
    assert isinstance(converted[1], nn.SyncBatchNorm)


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


def test_dead_peer_ends_the_other_rank_with_a_message_and_leaves_the_checkpoint_untouched(tmp_path,
                                                                                          tiny_image_folder):
    """Rank 1 dies on its 6th step, the 2nd of epoch 2 (4 steps per epoch): rank 0 stops at the
    timeout with one message; checkpoint.pth still holds epoch 1's state, equal to the copy kept
    after epoch 1 (train.keep_every=1), with no temporary file beside it; the run then resumes."""
    out = tmp_path / "run"
    args = _args(tiny_image_folder, out, BATCH // 2, "train.epochs=2", "train.dist_timeout_s=30", "train.keep_every=1")
    started = time.monotonic()
    results = launch("die_on_rank1_at_step6", 2, args, timeout=300)
    assert results[1][0] == 17, results
    code, err = results[0]
    assert code == 2 and "lost contact with another process" in err, err
    assert time.monotonic() - started < 300
    latest, kept = read_checkpoint(out / "checkpoint.pth"), read_checkpoint(out / "checkpoint0001.pth")
    assert latest["epoch"] == 1 and not (out / "checkpoint0002.pth").exists()
    for part in ("student", "teacher"):
        assert all(torch.equal(latest[part][k], kept[part][k]) for k in kept[part]), part
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    results = launch("ok", 2, args)
    assert [code for code, _ in results] == [0, 0], results
    assert read_checkpoint(out / "checkpoint.pth")["epoch"] == 2


def test_peer_that_never_arrives(tmp_path, tiny_image_folder):
    out = tmp_path / "run"
    started = time.monotonic()
    results = launch("ok", 2, _args(tiny_image_folder, out, BATCH // 2, "train.dist_timeout_s=5"),
                     ranks=[0], timeout=120)
    code, err = results[0]
    assert code == 2 and "could not join the process group" in err, err
    assert time.monotonic() - started < 120
    assert not (out / "checkpoint.pth").exists()
