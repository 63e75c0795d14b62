"""study.md and study.json: one row per variant."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

from dinossl.safe_files import write_atomic
from dinossl.study.definition import Study
from dinossl.study.results import VariantResult

REPORT_NAME = "study.md"
NUMBERS_NAME = "study.json"


def _number(value: Optional[float], digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _gain(result: VariantResult, key: str, value: Optional[float]) -> str:
    random_init, interval = result.final.get("random_init"), result.final.get(key)
    if value is None or random_init is None or interval is None:
        return "—"
    return f"{value - random_init:+.2f} ({interval[0]:+.2f} to {interval[1]:+.2f})"


def _memory(result: VariantResult) -> str:
    if result.peak_bytes is None:
        return "—"
    return f"{result.peak_bytes / 2**30:.2f} GiB"


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "—"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def report_text(study: Study, results: Sequence[VariantResult], command: str, machine: str) -> str:
    """The Markdown report: what ran, then one table row per variant."""
    lines = [f"# Study `{study.name}`", ""]
    if study.description:
        lines += [study.description, ""]
    lines += [f"Command: `{command}`", "", f"Machine: {machine}", ""]
    out_dims = sorted({r.out_dim for r in results})
    ln_k = ", ".join(f"ln {k} = {math.log(k):.2f}" for k in out_dims)
    lines += [
        "| variant | overrides | k-NN teacher | gain over random init (95% CI) | k-NN student | student gain (95% CI) "
        "| teacher entropy | KL | collapse | images/s | peak memory | training time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {' '.join(f'`{o}`' for o in r.overrides) or '(base)'} "
            f"| {_number(r.knn_teacher)} | {_gain(r, 'gain_ci95', r.knn_teacher)} "
            f"| {_number(r.knn_student)} | {_gain(r, 'student_gain_ci95', r.knn_student)} "
            f"| {_number(r.teacher_entropy, 3)} | {_number(r.kl, 4)} | {r.verdict or '—'} "
            f"| {_number(r.images_per_s, 1)} | {_memory(r)} | {_duration(r.seconds)} |"
        )
    random_inits = sorted({r.final["random_init"] for r in results if "random_init" in r.final})
    lines += [
        "",
        "k-NN: weighted 20-NN top-1 (%) on the built-in sample's 2,000 held-out images with its 10,000 training "
        "images as the bank, after the last epoch; the gain is over the same backbone at its random "
        "initialisation" + (f" ({', '.join(f'{v:.2f}' for v in random_inits)} %)" if random_inits else "")
        + ", with a 95% paired bootstrap interval over the held-out images.",
        f"Teacher entropy and KL(P_t || P_s): means over the last epoch, in nats ({ln_k}). Collapse: KL below "
        "1e-3 with the entropy within 2% of 0 (dimensional) or of ln K (uniform).",
        "images/s and training time: the training epochs only (not the k-NN checks). Peak memory: "
        + ("the GPU's peak allocated memory" if all(r.memory_measure == "cuda_max_allocated" for r in results
                                                    if r.memory_measure) else
           "the training process's peak resident memory (Linux VmHWM; it includes the Python process and the "
           "images held in memory)")
        + ", over the training epochs.",
        "",
    ]
    return "\n".join(lines)


def write_report(folder: Path, study: Study, results: Sequence[VariantResult], command: str, machine: str) -> list[Path]:
    """Write study.md and study.json into ``folder`` (atomically)."""
    text = report_text(study, results, command, machine)
    numbers = {"study": study.name, "command": command, "machine": machine,
               "variants": [r.to_dict() for r in results]}
    md, js = folder / REPORT_NAME, folder / NUMBERS_NAME
    write_atomic(md, lambda tmp: Path(tmp).write_text(text))
    write_atomic(js, lambda tmp: Path(tmp).write_text(json.dumps(numbers, indent=1) + "\n"))
    return [md, js]
