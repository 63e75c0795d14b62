"""Optional experiment trackers a run's records are also sent to: Weights & Biases or MLflow
(``train.logger``; extras ``dinossl[wandb]`` / ``dinossl[mlflow]``). ``log.jsonl`` is always
written; a tracker only mirrors its numbers (and pictures)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np

from dinossl.optional import require

TRACKERS = {"wandb": "wandb", "mlflow": "mlflow"}


class Tracker(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def log_image(self, name: str, image: np.ndarray, step: int) -> None: ...

    def close(self) -> None: ...


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    """``kind/key`` -> value for the finite numbers of a record."""
    kind = record.get("kind", "step")
    return {f"{kind}/{k}": float(v) for k, v in record.items()
            if k not in ("kind", "step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def _x(record: dict[str, Any]) -> int:
    return int(record.get("step" if record.get("kind", "step") == "step" else "epoch", 0))


class WandbTracker:
    """A W&B run in ``project``, its files under the run folder."""

    def __init__(self, project: str, run_dir: Path, config: dict[str, Any]) -> None:
        self.wandb = require("wandb", "train.logger=wandb")
        self.run = self.wandb.init(project=project, dir=str(run_dir), name=run_dir.name, config=config)

    def log(self, record: dict[str, Any]) -> None:
        numbers = _numbers(record)
        if numbers:
            self.run.log({**numbers, "x/" + ("step" if record.get("kind", "step") == "step" else "epoch"): _x(record)})

    def log_image(self, name: str, image: np.ndarray, step: int) -> None:
        self.run.log({name: self.wandb.Image(image), "x/epoch": step})

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run in the experiment ``project`` (tracking URI from MLflow's own settings)."""

    def __init__(self, project: str, run_dir: Path, config: dict[str, Any]) -> None:
        self.mlflow = require("mlflow", "train.logger=mlflow")
        self.mlflow.set_experiment(project)
        self.mlflow.start_run(run_name=run_dir.name)
        flat = {f"{section}.{k}": v for section, values in config.items() if isinstance(values, dict)
                for k, v in values.items()}
        self.mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})

    def log(self, record: dict[str, Any]) -> None:
        numbers = {k.replace("/", "."): v for k, v in _numbers(record).items()}
        if numbers:
            self.mlflow.log_metrics(numbers, step=_x(record))

    def log_image(self, name: str, image: np.ndarray, step: int) -> None:
        self.mlflow.log_image(image, f"{name}_{step:04d}.png")

    def close(self) -> None:
        self.mlflow.end_run()


def open_tracker(name: str, project: str, run_dir: str | Path, config: dict[str, Any]) -> Optional[Tracker]:
    """The tracker ``train.logger`` names (None for ``none``); a one-line DinoError naming the
    extra when its package is missing."""
    if name == "wandb":
        return WandbTracker(project, Path(run_dir), config)
    if name == "mlflow":
        return MlflowTracker(project, Path(run_dir), config)
    return None


def check_tracker(name: str) -> None:
    """Raise the one-line error for a requested tracker whose package is not installed."""
    if name in TRACKERS:
        require(TRACKERS[name], f"train.logger={name}")
