"""Results files: one JSON per evaluation (the same header, figures, settings), written one way,
atomically; and a short printed table."""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from dinossl.inference import weights_sha256
from dinossl.outputs import usable_output_file
from dinossl.runtime.machine import machine_record, versions_record
from dinossl.safe_files import write_atomic

RESULTS_NAME = "results.json"
REQUIRED = ("weights", "settings")


def command_line(argv: Sequence[str] = ()) -> str:
    """The command that is running, as a shell would take it (``dino ...`` for the CLI)."""
    argv = list(argv or sys.argv)
    if argv and Path(argv[0]).name in ("dino", "__main__.py"):
        argv = ["dino", *argv[1:]]
    return shlex.join(argv)


def with_header(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the header every results file carries: ``command``, ``weights`` (with
    the file's SHA-256 when it is a local file), ``settings``, ``versions``, ``machine`` and
    ``written`` (UTC). ValueError when ``record`` lacks ``weights`` or ``settings``."""
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise ValueError(f"a results record needs {' and '.join(missing)}")
    weights = dict(record["weights"])
    if "sha256" not in weights and weights.get("path") and Path(weights["path"]).is_file():
        weights["sha256"] = weights_sha256(weights["path"])
    return {"command": command_line(), **record, "weights": weights, "versions": versions_record(),
            "machine": machine_record(),
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_results(path: str | Path, record: dict[str, Any], overwrite: bool = False) -> Path:
    """Write ``record`` with its header (:func:`with_header`) as JSON, atomically (a temporary
    file beside ``path``, then a rename): a failure leaves any earlier file as it was."""
    path = usable_output_file(path, overwrite)
    text = json.dumps(with_header(record), indent=2, sort_keys=False) + "\n"
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))
    return path


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned text table; floats with 2 decimals."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join(lines)


def summary_table(record: dict[str, Any]) -> str:
    """The printed summary of a results record written by one of the evaluations."""
    results = record["results"]
    if record["evaluation"] == "knn":
        rows = [(f"k={k}", v["top1"], v["top5"]) for k, v in results["knn"].items()]
        return format_table(("k-NN (T=%g)" % record["settings"]["temperature"], "top-1 %", "top-5 %"), rows)
    if "last" not in results:  # a saved classifier, scored without training
        return format_table((record["protocol"], "top-1 %", "top-5 %"), [("val", results["top1"], results["top5"])])
    rows = [(name, results[name]["epoch"], results[name]["top1"], results[name]["top5"]) for name in ("last", "best")]
    return format_table((record["protocol"], "epoch", "top-1 %", "top-5 %"), rows)
