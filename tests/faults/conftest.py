"""Helpers of the fault-injection suite: `dino train` in child processes (one, or two ranks on
gloo started as torchrun starts them), signals sent at a chosen step, and exact comparisons."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from dinossl.safe_files import DIGEST_SUFFIX
from dinossl.train.checkpoint import read_checkpoint
from tests.conftest import TINY_OVERRIDES
from tests.process_ranks import REPO, child_env, start_ranks, wait_all

TRAIN_WORKER = Path(__file__).with_name("train_worker.py")
DIST_WORKER = REPO / "tests" / "train" / "dist_worker.py"
GLOBAL_BATCH = 16  # 64 images: 4 steps per epoch


def run_args(folder: Path, out: Path, geometric: str, per_process: int = GLOBAL_BATCH, *extra: str) -> list[str]:
    """`dino train` arguments of the runs the suite interrupts: 2 epochs x 4 steps, a log record
    per step, device-side photometric step (both crop paths take it)."""
    kept = [o for o in TINY_OVERRIDES if not o.startswith("train.batch_size_per_process")]
    return ["--output", str(out), *kept, f"data.path={folder}", f"train.batch_size_per_process={per_process}",
            "train.epochs=2", "train.log_every=1", "data.photometric=device", f"data.geometric={geometric}",
            "loss.warmup_teacher_temp_epochs=1", *extra]


def start(args: list[str], processes: int = 1, fault: str = "ok") -> list[subprocess.Popen]:
    """Start `dino train` with ``args`` in ``processes`` ranks (fault: see train_worker.py)."""
    if processes == 1:
        return [subprocess.Popen([sys.executable, str(TRAIN_WORKER), fault, *args], env=child_env(), cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    return start_ranks(DIST_WORKER, ["ok", *args], processes)


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    """Wait for every process; [(exit status, stderr)]."""
    return wait_all(procs, timeout, "training")


def steps_logged(out: Path) -> int:
    path = out / "log.jsonl"
    if not path.is_file():
        return 0
    return path.read_text().count('"kind": "step"')


def signal_at_step(procs: list[subprocess.Popen], out: Path, step: int, signum: int,
                   timeout: float = 300) -> list[tuple[int, str]]:
    """Send ``signum`` to every process once ``step`` steps are logged; wait for them."""
    deadline = time.monotonic() + timeout
    while steps_logged(out) < step and all(p.poll() is None for p in procs):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signum)
    return finish(procs, timeout)


def records(out: Path) -> list[dict]:
    """log.jsonl without the timing fields (they differ between any two runs)."""
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in rows]


def assert_same_state(a: dict, b: dict) -> None:
    """Bit-for-bit equal networks, optimiser state, center and position."""
    for part in ("student", "teacher"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert torch.equal(a["dino_loss"]["center"], b["dino_loss"]["center"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        for name in sa[key]:
            assert torch.equal(sa[key][name], sb[key][name]), f"optimizer {key}.{name}"
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])


def assert_same_run(reference: Path, resumed: Path) -> None:
    """The resumed run ends as the uninterrupted one: state, log and folder contents."""
    assert_same_state(read_checkpoint(reference / "checkpoint.pth"), read_checkpoint(resumed / "checkpoint.pth"))
    assert records(resumed) == records(reference)
    assert leftovers(resumed) == []
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in reference.iterdir())


def leftovers(out: Path) -> list[str]:
    """Temporary files of interrupted writes."""
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))


def assert_loadable_or_absent(out: Path) -> None:
    """Whatever a kill left is a checkpoint that loads and matches its SHA-256, or nothing."""
    path = out / "checkpoint.pth"
    if path.exists():
        state = read_checkpoint(path)  # checks the SHA-256 record
        assert (out / f"checkpoint.pth{DIGEST_SUFFIX}").is_file()
        assert "student" in state


SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}
