"""A variant's results, read back from its run folder's ``log.jsonl``: teacher entropy and KL per
step and per epoch, k-NN per epoch (teacher and student), the final k-NN against random init,
training time, images/s, peak memory, and a collapse verdict.

A run that was interrupted and resumed logs some steps and epochs twice; the last record of
each step and epoch counts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from dinossl.errors import DinoError
from dinossl.eval.classification.knn_monitor import KNN_METRIC, STUDENT_KNN_METRIC
from dinossl.objective import CollapseMonitor
from dinossl.train.run_log import LOG_NAME

VERDICTS = {"uniform": "uniform collapse", "dimensional": "dimensional collapse", None: "no collapse"}


@dataclass
class VariantResult:
    """What a study reports about one variant."""

    name: str
    overrides: list[str]
    out_dim: int
    steps: list[tuple[float, float, float]] = field(default_factory=list)  # (epoch, entropy, kl), epoch fractional
    epochs: list[dict[str, float]] = field(default_factory=list)  # epoch records, in order
    knn: list[tuple[int, float, Optional[float]]] = field(default_factory=list)  # (epoch, teacher, student)
    final: dict[str, Any] = field(default_factory=dict)  # the after-training k-NN record
    peak_bytes: Optional[int] = None
    memory_measure: Optional[str] = None

    @property
    def teacher_entropy(self) -> Optional[float]:
        return self.epochs[-1]["teacher_entropy"] if self.epochs else None

    @property
    def kl(self) -> Optional[float]:
        return self.epochs[-1]["kl"] if self.epochs else None

    @property
    def seconds(self) -> float:
        return sum(e.get("seconds", 0.0) for e in self.epochs)

    @property
    def images_per_s(self) -> Optional[float]:
        images = sum(e.get("images", 0) for e in self.epochs)
        return images / self.seconds if images and self.seconds > 0 else None

    @property
    def verdict(self) -> Optional[str]:
        """"uniform collapse", "dimensional collapse" or "no collapse" from the last epoch's mean
        teacher entropy and KL (the thresholds of :class:`~dinossl.objective.CollapseMonitor`)."""
        if self.teacher_entropy is None or self.kl is None:
            return None
        return VERDICTS[CollapseMonitor(self.out_dim).kind(self.teacher_entropy, self.kl)]

    @property
    def knn_teacher(self) -> Optional[float]:
        if "trained" in self.final:
            return self.final["trained"]
        return self.knn[-1][1] if self.knn else None

    @property
    def knn_student(self) -> Optional[float]:
        if "student" in self.final:
            return self.final["student"]
        return self.knn[-1][2] if self.knn else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "overrides": self.overrides, "out_dim": self.out_dim,
            "teacher_entropy": self.teacher_entropy, "kl": self.kl, "max_entropy": math.log(self.out_dim),
            "verdict": self.verdict, "knn_teacher": self.knn_teacher, "knn_student": self.knn_student,
            "knn_random_init": self.final.get("random_init"), "gain_ci95": self.final.get("gain_ci95"),
            "student_gain_ci95": self.final.get("student_gain_ci95"), "seconds": self.seconds,
            "images_per_s": self.images_per_s, "peak_bytes": self.peak_bytes, "memory_measure": self.memory_measure,
            "epochs": self.epochs, "knn_per_epoch": [list(k) for k in self.knn],
            "steps": [list(s) for s in self.steps],
        }


def _records(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DinoError(f"{path} line {number} is not JSON ({exc.msg})") from None
    return records


def read_variant(folder: str | Path, name: str, overrides: list[str], out_dim: int) -> VariantResult:
    """The results in ``folder/log.jsonl`` (a DinoError when the file is missing or damaged)."""
    path = Path(folder) / LOG_NAME
    if not path.is_file():
        raise DinoError(f"{path} does not exist: variant {name} has not run")
    records = _records(path)
    steps: dict[int, dict[str, Any]] = {}
    epochs: dict[int, dict[str, Any]] = {}
    knn: dict[int, tuple[int, float, Optional[float]]] = {}
    result = VariantResult(name, list(overrides), out_dim)
    peaks: dict[int, int] = {}
    for record in records:
        kind = record.get("kind")
        if kind == "step":
            steps[int(record["step"])] = record
        elif kind == "epoch":
            epochs[int(record["epoch"])] = record
        elif kind == "knn":
            knn[int(record["epoch"])] = (int(record["epoch"]), record[KNN_METRIC], record.get(STUDENT_KNN_METRIC))
        elif kind == "memory":
            peaks[int(record["epoch"])] = int(record["peak_bytes"])
            result.memory_measure = record.get("measure")
        elif kind == "result" and record.get("metric") == KNN_METRIC:
            result.final = record
    result.epochs = [epochs[e] for e in sorted(epochs)]
    result.knn = [knn[e] for e in sorted(knn)]
    result.peak_bytes = max(peaks.values()) if peaks else None
    first_epoch_steps = [s for s, r in steps.items() if int(r["epoch"]) == 1]
    steps_per_epoch = max(first_epoch_steps) if first_epoch_steps else None
    if steps_per_epoch:
        result.steps = [(s / steps_per_epoch, steps[s]["teacher_entropy"], steps[s]["kl"]) for s in sorted(steps)]
    return result
