"""benchmarks/device_check.sh: --prepare fills one git-ignored folder under 40 MiB; the check
reads only from it, stops at once with one line when torch sees no GPU, and its dry run
(DRY_RUN=1: every part that can, on the CPU, tiny) writes each part's JSON and a summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "device_check.sh"
ARCHIVES = ("weizmann-horses-100.tar.gz", "davis2016-3seq.tar.gz", "cifar10-jpg.tar.gz")


def _run(args: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env={**os.environ, "PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=timeout)


def _prepare(root: Path, reference: Path | None) -> Path:
    data = root / "data"
    env = {"DEVICE_CHECK_DATA": str(data), "DINOSSL_SHARED_DATA": str(SHARED_DATA),
           "DINO_REFERENCE": str(reference) if reference else "none"}
    result = _run(["--prepare"], env, timeout=120)
    assert result.returncode == 0, result.stderr
    return data


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared folder (outside the repository: DEVICE_CHECK_DATA), without a reference clone
    (DINO_REFERENCE=none, even where one lies next to the repository: the comparison parts then
    skip with their reason)."""
    if not all((SHARED_DATA / name).is_file() for name in ARCHIVES):
        pytest.skip(f"{', '.join(ARCHIVES)} not in {SHARED_DATA}: needs the larger shared data set (DINOSSL_SHARED_DATA)")
    return _prepare(tmp_path_factory.mktemp("device_check"), None)


def test_prepare_copies_the_archives_and_pytest_under_40_mib(prepared):
    assert sorted(p.name for p in (prepared / "shared").iterdir()) == sorted(ARCHIVES)
    assert not (prepared / "dino-reference").exists()
    assert (prepared / "pylib.tar.gz").is_file()
    assert sum(p.stat().st_size for p in prepared.rglob("*") if p.is_file()) < 40 * 2**20


def test_prepare_copies_only_the_python_files_of_a_reference_clone(prepared, tmp_path):
    reference = tmp_path / "dino-reference"
    (reference / ".git").mkdir(parents=True)
    for name in ("main_dino.py", "utils.py", "README.md", ".git/hook.py"):
        (reference / name).write_text("# stand-in\n")
    data = _prepare(tmp_path, reference)
    assert sorted(p.name for p in (data / "dino-reference").rglob("*") if p.is_file()) == ["main_dino.py", "utils.py"]


def test_the_default_prepared_folder_is_ignored_by_git():
    for name in ("device-check-data/shared/x.tar.gz", "device-check-20990101-000000/status.jsonl"):
        assert subprocess.run(["git", "check-ignore", "-q", "--no-index", name], cwd=REPO).returncode == 0, name


def test_a_missing_archive_fails_prepare_with_one_line(tmp_path):
    result = _run(["--prepare"], {"DEVICE_CHECK_DATA": str(tmp_path / "data"), "DINOSSL_SHARED_DATA": str(tmp_path)},
                  timeout=60)
    assert result.returncode == 2 and not (tmp_path / "data").exists()
    assert result.stderr.count("\n") == 1 and "weizmann-horses-100.tar.gz not found" in result.stderr


def test_the_check_stops_at_once_without_a_gpu(prepared, tmp_path):
    """On a machine where torch sees no GPU (and without DRY_RUN=1): one line, exit 2, the
    environment recorded, nothing else run."""
    if shutil.which("nvidia-smi") or os.environ.get("CUDA_VISIBLE_DEVICES", "x") != "x":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    result = _run([str(out)], {"DEVICE_CHECK_DATA": str(prepared), "DRY_RUN": "0"}, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("device_check: error: torch ")
    assert "sees no GPU" in result.stderr
    assert json.loads((out / "env.json").read_text())["cuda_available"] is False
    assert [json.loads(line)["part"] for line in (out / "status.jsonl").read_text().splitlines()] == ["env"]


def test_the_dry_run_runs_every_part_on_the_cpu(prepared, tmp_path):
    """DRY_RUN=1 on this CPU: every part ends with status 0 (the gpu tests skip; without a
    reference the comparisons are skipped with their reason) and leaves its JSON; the summary
    gathers them."""
    out = tmp_path / "out"
    result = _run([str(out)], {"DEVICE_CHECK_DATA": str(prepared), "DRY_RUN": "1"}, timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    status = {entry["part"]: entry for entry in map(json.loads, (out / "status.jsonl").read_text().splitlines())}
    assert list(status) == ["env", "gpu_tests", "compare_fp32", "compare_bf16", "compare_fp16", "pipeline", "cifar10"]
    assert "needs a GPU" in status["compare_fp16"]["skipped"]
    assert "no reference" in status["compare_fp32"]["skipped"] and "no reference" in status["compare_bf16"]["skipped"]
    for name in ("env", "gpu_tests", "pipeline", "cifar10"):
        assert status[name]["rc"] == 0, (name, (out / f"{name}.log").read_text()[-2000:] if name != "env" else "")
    for name in ("env.json", "pipeline.json", "cifar10.json", "summary.json", "gpu_tests.xml"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["data_pipeline"]["cores_needed"]["pil_loader_cores"] > 0
