"""A fresh clone on a CPU-only machine skips only tests that need a GPU (CUDA or Apple's MPS) or an
optional extra; tests skipped for any other reason stay under a small number.

Two sources of skips are checked. (1) What pytest knows before a test's body runs (skip and
skipif markers, the gpu marker, modules skipped at collection, tests that ask for the larger shared
data set): a ``--collect-only`` run in a subprocess, as a fresh clone sees it (no shared data, no
CUDA device), writes them out through the census in tests/conftest.py. (2) Skips decided inside a
test or fixture: every ``pytest.skip(...)`` call in the test sources must give a reason of an
allowed kind."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import SKIP_CENSUS

TESTS = Path(__file__).resolve().parent
DEVICE_OR_EXTRA = re.compile(r"CUDA|GPU|\bMPS\b|optional", re.IGNORECASE)
# Today the only other skips before a body runs are the 5 long fault variants (DINOSSL_LONG_FAULTS=1
# runs them); real-image tests use tests/fixtures/ and skip for no data.
MAX_OTHER_SKIPS = 5
# Inside a body or fixture, besides a device or an optional extra: what the machine or its user
# allows (mounting needs root; root writes into read-only folders; /proc and glibc are Linux's), the
# installed torch's version, and the shared data set, whose users the census counts.
BODY_REASONS = re.compile(r"CUDA|GPU|\bMPS\b|optional|needs root|this user|/proc/|glibc|this torch"
                          r"|shared data set", re.IGNORECASE)


def census(tmp_path: Path, *where: str) -> dict:
    """{"collected": n, "skipped": {node id: reason}} of the tests ``where`` (default: the whole
    suite), as a fresh clone sees them."""
    out = tmp_path / "census.json"
    env = {**os.environ, SKIP_CENSUS: str(out), "DINOSSL_SHARED_DATA": str(tmp_path / "no-shared-data"),
           "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(TESTS.parent)}
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *(where or (str(TESTS),))], cwd=TESTS.parent, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def other_skips(skipped: dict[str, str]) -> dict[str, str]:
    return {node: reason for node, reason in skipped.items() if not DEVICE_OR_EXTRA.search(reason)}


def test_a_fresh_clone_skips_only_device_and_extra_tests(tmp_path):
    found = census(tmp_path)
    skipped = found["skipped"]
    assert found["collected"] > 800  # the whole suite was seen
    assert any("CUDA" in reason for reason in skipped.values())  # the census sees the gpu marker
    others = other_skips(skipped)
    assert len(others) <= MAX_OTHER_SKIPS, "\n".join(f"{node}: {reason}" for node, reason in sorted(others.items()))


def test_the_census_counts_a_test_that_needs_the_shared_data(tmp_path):
    """A test asking for the larger set (through cifar10_dir) counts as a skip on a fresh clone;
    one using the repository's fixtures does not."""
    probe = tmp_path / "probe" / "test_probe.py"
    probe.parent.mkdir()
    probe.write_text("def test_needs_all_of_cifar10(cifar10_dir):\n    pass\n\n\n"
                     "def test_needs_the_fixtures(cifar10_small, horses_dir, davis_dir):\n    pass\n")
    (probe.parent / "pytest.ini").write_text("[pytest]\n")  # its own root, beside the suite's
    found = census(tmp_path, "-p", "tests.conftest", "--rootdir", str(probe.parent), str(probe))
    assert found["collected"] == 2
    assert list(other_skips(found["skipped"])) == ["test_probe.py::test_needs_all_of_cifar10"]
    assert "shared data" in found["skipped"]["test_probe.py::test_needs_all_of_cifar10"]


def _skip_calls(tree: ast.AST):
    """(line, reason text) of every ``pytest.skip(...)`` call in ``tree``."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "skip"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "pytest"):
            arguments = [*node.args, *(k.value for k in node.keywords if k.arg == "reason")]
            yield node.lineno, " ".join(ast.unparse(a) for a in arguments)


def test_skips_inside_tests_name_an_allowed_reason():
    calls = [(path, line, reason) for path in sorted(TESTS.rglob("*.py"))
             for line, reason in _skip_calls(ast.parse(path.read_text(), str(path)))]
    assert len(calls) >= 5  # the scan finds the known ones (the gpu, root and /proc skips)
    wrong = [f"{path.relative_to(TESTS.parent)}:{line}: {reason}" for path, line, reason in calls
             if not BODY_REASONS.search(reason)]
    assert not wrong, "\n".join(wrong)
