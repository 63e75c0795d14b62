"""One JSON summary of a ``benchmarks/device_check.sh`` folder: each part's status and its key
figures (the environment, test counts and skip reasons, step images/s and peak memory against
the reference per precision, the loader's images/s per CPU core and the device pipeline's, the
timed CIFAR-10 run and its k-NN). Writes
OUT_DIR/summary.json and prints it.

    python benchmarks/device_check_summary.py OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402


def _json(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tests(folder: Path) -> Optional[dict[str, Any]]:
    try:
        root = ElementTree.parse(folder / "gpu_tests.xml").getroot()
    except (OSError, ElementTree.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = suite.findall("testcase") if suite is not None else []
    outcome = {"passed": [], "failed": [], "skipped": []}
    reasons = set()
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome["failed"].append(name)
        elif (skipped := case.find("skipped")) is not None:
            outcome["skipped"].append(name)
            reasons.add((skipped.get("message") or "").strip())
        else:
            outcome["passed"].append(name)
    return {"passed": len(outcome["passed"]), "failed": outcome["failed"], "skipped": len(outcome["skipped"]),
            "skip_reasons": sorted(reasons)}


def compare(folder: Path, precision: str) -> Optional[dict[str, Any]]:
    report = _json(folder / f"compare_{precision}.json")
    if report is None:
        return None
    results = report.get("results", {})
    return {
        "config": {k: report["config"].get(k) for k in ("arch", "crops", "batch", "out_dim", "device")},
        "sanity_ok": report.get("sanity", {}).get("ok"),
        "images_per_s": {k: v.get("images_per_s") for k, v in results.items()},
        "peak_memory_mb": {k: v.get("peak_memory_mb") for k, v in results.items()},
        "errors": {k: v["error"] for k, v in results.items() if "error" in v},
        "ratios": report.get("ratios"), "compile_cost": report.get("compile_cost"),
        "precision": {"reference": report.get("reference", {}).get("precision"),
                      **{k: v.get("precision") for k, v in results.items() if k != "reference"}},
    }


def pipeline(folder: Path) -> Optional[dict[str, Any]]:
    report = _json(folder / "pipeline.json")
    if report is None:
        return None
    return {k: report.get(k) for k in ("workload", "pil", "device", "cores_needed", "load_average_before")}


def cifar10(folder: Path) -> Optional[dict[str, Any]]:
    report = _json(folder / "cifar10.json")
    if report is None:
        return None
    return {k: report.get(k) for k in ("minutes", "epochs", "train_s", "images_per_s_median", "batch_per_process",
                                       "precision", "knn")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seconds", type=int, default=None, help="the whole check's wall time")
    parser.add_argument("--dry-run", default="0")
    args = parser.parse_args()

    import torch

    status = [json.loads(line) for line in (args.folder / "status.jsonl").read_text().splitlines() if line.strip()]
    summary = {
        "device_check": str(args.folder), "dry_run": args.dry_run == "1", "seconds": args.seconds,
        "machine": describe(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "parts": status,
        "gpu_tests": tests(args.folder),
        "environment": _json(args.folder / "env.json"),
        "compare_reference": {p: compare(args.folder, p) for p in ("fp32", "bf16", "fp16")},
        "data_pipeline": pipeline(args.folder),
        "cifar10": cifar10(args.folder),
    }
    (args.folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
