"""One picture of a run's curves from its ``log.jsonl``, per epoch: loss, lr, teacher entropy,
KL (student || teacher), center norm and whatever k-NN accuracies the monitors logged.

lr is the mean of the step records of an epoch; the others come from the epoch and k-NN
records. A resumed run may have logged an epoch twice: its last record counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dinossl.errors import DinoError
from dinossl.optional import require
from dinossl.safe_files import write_atomic
from dinossl.train.run_log import LOG_NAME

PLOT_NAME = "curves.png"
EPOCH_PANELS = (("loss", "loss"), ("teacher_entropy", "teacher entropy"), ("kl", "KL(student || teacher)"),
                ("center_norm", "center norm"))

Curve = list[tuple[int, float]]


def read_records(run_folder: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_folder/log.jsonl`` (DinoError when there is none); unreadable lines
    (a run killed while writing one) are skipped."""
    path = Path(run_folder) / LOG_NAME
    if not path.is_file():
        raise DinoError(f"{run_folder} holds no {LOG_NAME} (is it a dino train run folder?)")
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def curves(records: list[dict[str, Any]]) -> dict[str, Curve]:
    """Name -> [(epoch, value)] sorted by epoch: the epoch panels, ``lr`` (mean over the epoch's
    step records) and one curve per k-NN number (``*top1*`` keys of ``knn`` records)."""
    by_epoch: dict[str, dict[int, float]] = {}
    lr_sums: dict[int, list[float]] = {}
    for record in records:
        kind, epoch = record.get("kind"), record.get("epoch")
        if not isinstance(epoch, int):
            continue
        if kind == "epoch":
            for key, _ in EPOCH_PANELS:
                if isinstance(record.get(key), (int, float)):
                    by_epoch.setdefault(key, {})[epoch] = float(record[key])
        elif kind == "step" and isinstance(record.get("lr"), (int, float)):
            lr_sums.setdefault(epoch, []).append(float(record["lr"]))
        elif kind == "knn":
            for key, value in record.items():
                if "top1" in key and isinstance(value, (int, float)):
                    by_epoch.setdefault(key, {})[epoch] = float(value)
    if lr_sums:
        by_epoch["lr"] = {epoch: sum(v) / len(v) for epoch, v in lr_sums.items()}
    return {name: sorted(points.items()) for name, points in by_epoch.items()}


def plot_run(run_folder: str | Path, output: str | Path) -> Path:
    """Draw the run's curves into one PNG at ``output`` (atomically); returns its path."""
    data = curves(read_records(run_folder))
    if not any(data.get(key) for key, _ in EPOCH_PANELS):
        raise DinoError(f"{Path(run_folder) / LOG_NAME} has no epoch records yet (the first epoch has not ended)")
    matplotlib = require("matplotlib", "dino plot")
    matplotlib.use("Agg")
    pyplot = require("matplotlib.pyplot", "dino plot")
    knn_keys = sorted(k for k in data if "top1" in k)
    panels = [(key, title) for key, title in EPOCH_PANELS if data.get(key)]
    if data.get("lr"):
        panels.insert(1, ("lr", "learning rate"))
    if knn_keys:
        panels.append(("knn", "k-NN top-1 (%)"))
    columns = 3
    rows = -(-len(panels) // columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, (key, title) in zip(axes.flat, panels):
        for name in (knn_keys if key == "knn" else [key]):
            epochs, values = zip(*data[name])
            axis.plot(epochs, values, marker="o" if len(epochs) < 30 else None, markersize=3,
                      label=name if key == "knn" else None)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if key == "knn":
            axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.suptitle(str(Path(run_folder).resolve().name))
    figure.tight_layout()
    output = Path(output)
    write_atomic(output, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    pyplot.close(figure)
    return output
