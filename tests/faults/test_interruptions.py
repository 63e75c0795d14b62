"""Kills and preemption at random steps, and kills inside checkpoint writes: every interrupted
run leaves a checkpoint that loads (or none), and resuming it ends bit for bit where the
uninterrupted run ends, with no temporary file left and the same log.

The random steps are drawn from a seeded generator, so a failure names a reproducible trial.
The fast variants run in CI; the long ones (every combination, more trials; ``slow``) run when
DINOSSL_LONG_FAULTS=1 is set, since CI's plain ``pytest`` does not deselect ``slow``."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from dinossl.cli import main
from dinossl.train.checkpoint import read_checkpoint
from dinossl.train.preemption import requeue_exit_status
from tests.faults.conftest import (
    GLOBAL_BATCH,
    SIGNALS,
    assert_loadable_or_absent,
    assert_same_run,
    finish,
    leftovers,
    run_args,
    signal_at_step,
    start,
)

TOTAL_STEPS = 8  # 2 epochs x 4 steps
long_variant = pytest.mark.skipif(os.environ.get("DINOSSL_LONG_FAULTS") != "1",
                                  reason="long fault variant: set DINOSSL_LONG_FAULTS=1 to run it")


@pytest.fixture(scope="module")
def references(tmp_path_factory, tiny_image_folder):
    """Uninterrupted single-process runs, one per crop path, made on first use."""
    made = {}

    def get(geometric: str):
        if geometric not in made:
            out = tmp_path_factory.mktemp(f"reference-{geometric}") / "run"
            assert main(["train", *run_args(tiny_image_folder, out, geometric)]) == 0
            made[geometric] = out
        return made[geometric]

    return get


def _interrupt_and_resume(tmp_path, folder, geometric, signame, step, processes=1):
    out = tmp_path / f"{signame}-{geometric}-{processes}-at{step}"
    per_process = GLOBAL_BATCH // processes
    every = ["train.checkpoint_every_steps=2"] if signame == "SIGKILL" else []  # SIGTERM writes its own
    results = signal_at_step(start(run_args(folder, out, geometric, per_process, *every), processes), out, step,
                             SIGNALS[signame])
    codes = [code for code, _ in results]
    if signame == "SIGTERM":
        assert all(code in (0, requeue_exit_status(SIGNALS["SIGTERM"])) for code in codes), results
    else:
        assert all(code in (0, -SIGNALS["SIGKILL"]) for code in codes), results
    assert_loadable_or_absent(out)
    resumed = finish(start(run_args(folder, out, geometric, per_process), processes))
    assert all(code == 0 for code, _ in resumed), resumed
    return out, codes


def _steps(trial: int, count: int) -> list[int]:
    """Steps at which to send a signal: late enough to be inside training, early enough that the
    run is still training when the signal lands (the test polls log.jsonl on a loaded machine)."""
    rng = random.Random(1000 + trial)
    return [rng.randint(1, TOTAL_STEPS - 3) for _ in range(count)]


@pytest.mark.parametrize("geometric", ["per_image", "batched"])
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGKILL"])
def test_one_process_interrupted_at_a_random_step_resumes_bit_exactly(tmp_path, tiny_image_folder, references,
                                                                      geometric, signame):
    step = _steps(["per_image", "batched"].index(geometric) * 2 + ["SIGTERM", "SIGKILL"].index(signame), 1)[0]
    out, codes = _interrupt_and_resume(tmp_path, tiny_image_folder, geometric, signame, step)
    if signame == "SIGTERM":
        assert codes == [requeue_exit_status(SIGNALS["SIGTERM"])]  # stopped inside training, not after it
    assert_same_run(references(geometric), out)


@pytest.fixture(scope="module")
def two_process_references(tmp_path_factory, tiny_image_folder):
    made = {}

    def get(geometric: str):
        if geometric not in made:
            out = tmp_path_factory.mktemp(f"reference2-{geometric}") / "run"
            results = finish(start(run_args(tiny_image_folder, out, geometric, GLOBAL_BATCH // 2), 2))
            assert all(code == 0 for code, _ in results), results
            made[geometric] = out
        return made[geometric]

    return get


def _two_processes(tmp_path, folder, references, geometric, signame, step):
    out, codes = _interrupt_and_resume(tmp_path, folder, geometric, signame, step, processes=2)
    assert_same_run(references(geometric), out)


def test_two_processes_preempted_inside_an_epoch_resume_bit_exactly(tmp_path, tiny_image_folder,
                                                                    two_process_references):
    _two_processes(tmp_path, tiny_image_folder, two_process_references, "batched", "SIGTERM", 3)


@pytest.mark.slow
@long_variant
@pytest.mark.parametrize("geometric,signame", [("per_image", "SIGTERM"), ("per_image", "SIGKILL"),
                                               ("batched", "SIGKILL")])
def test_two_processes_interrupted_at_a_random_step_resume_bit_exactly(tmp_path, tiny_image_folder,
                                                                       two_process_references, geometric, signame):
    step = _steps(len(geometric) + len(signame), 1)[0]
    _two_processes(tmp_path, tiny_image_folder, two_process_references, geometric, signame, step)


def _checkpoint_step(out) -> int | None:
    """The global step checkpoint.pth holds (its SHA-256 record checked), None without one."""
    path = out / "checkpoint.pth"
    return read_checkpoint(path)["step"] if path.exists() else None


def _kill_inside_writes(tmp_path, folder, reference, trials: int, seed: int):
    """``trials`` runs killed inside a checkpoint write (while the file is written, or between the
    renames of the SHA-256 record, the checkpoint and the record again), each resumed to the end.
    A kill before the checkpoint's rename leaves its temporary file and the previous checkpoint,
    intact (none before the first write); a kill after it leaves the new one, intact."""
    rng = random.Random(seed)
    for trial in range(trials):
        out = tmp_path / f"trial{trial}"
        write = rng.randint(1, 4)  # the checkpoints after steps 2, 4 (epoch end), 6 and 8 (epoch end)
        fault = (f"in_write:{write}:{rng.uniform(0.0, 1.0):.3f}" if rng.random() < 0.5
                 else f"at_rename:{write}:{rng.randint(1, 3)}")
        results = finish(start(run_args(folder, out, "batched", GLOBAL_BATCH, "train.checkpoint_every_steps=2"),
                               fault=fault))
        assert results[0][0] == -9, (fault, results)  # the fault struck
        before_rename = fault.startswith("in_write") or fault.endswith(":1")
        if before_rename:
            left = leftovers(out)  # the new checkpoint's temporary file: the kill landed inside the write
            assert len(left) == 1 and left[0].startswith(".checkpoint.pth."), (fault, left)
            assert _checkpoint_step(out) == (2 * (write - 1) if write > 1 else None), fault  # the old one survives
        else:
            assert _checkpoint_step(out) == 2 * write, fault  # the new one, renamed into place
        assert_loadable_or_absent(out)
        resumed = finish(start(run_args(folder, out, "batched", GLOBAL_BATCH)))
        assert resumed[0][0] == 0, (fault, resumed)
        assert leftovers(out) == [], fault
        assert_same_run(reference, out)
        shutil.rmtree(out)


def test_kills_inside_checkpoint_writes_leave_a_loadable_checkpoint_and_no_leftovers(tmp_path, tiny_image_folder,
                                                                                     references):
    _kill_inside_writes(tmp_path, tiny_image_folder, references("batched"), trials=3, seed=17)


@pytest.mark.slow
@long_variant
def test_many_kills_inside_checkpoint_writes(tmp_path, tiny_image_folder, references):
    _kill_inside_writes(tmp_path, tiny_image_folder, references("batched"), trials=16, seed=29)


@pytest.mark.slow
@long_variant
def test_many_kills_at_random_steps(tmp_path, tiny_image_folder, references):
    for trial, step in enumerate(_steps(7, 6)):
        geometric = ("per_image", "batched")[trial % 2]
        out, _ = _interrupt_and_resume(tmp_path, tiny_image_folder, geometric, "SIGKILL", step)
        assert_same_run(references(geometric), out)
        shutil.rmtree(out)
