"""Results files: one JSON per evaluation (figures + settings), and a short printed table."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Sequence

from dinossl import __version__
from dinossl.outputs import usable_output_file
from dinossl.safe_files import write_atomic


def write_results(path: str | Path, record: dict[str, Any], overwrite: bool = False) -> Path:
    """Write ``record`` (plus a timestamp and the package version) as JSON, atomically."""
    path = usable_output_file(path, overwrite)
    full = {**record, "dinossl_version": __version__,
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    text = json.dumps(full, indent=2, sort_keys=False) + "\n"
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
