"""The monitors a training run's config asks for (the one place they are chosen; ``dino train``
and ``dino study`` both hand them to the trainer): the k-NN check (on ``train.val_data`` or the
built-in sample) and attention-map snapshots (``train.attention_every``)."""

from __future__ import annotations

from pathlib import Path

from dinossl.config import Config
from dinossl.eval.attention.training_snapshots import AttentionDuringTraining
from dinossl.eval.classification.knn_monitor import knn_monitor
from dinossl.train import RunMonitor


def training_monitors(config: Config, run_folder: str | Path) -> list[RunMonitor]:
    """k-NN monitor (:func:`~dinossl.eval.classification.knn_monitor.knn_monitor`), then the
    attention snapshots written into ``run_folder``, as ``config`` asks for them."""
    t = config.train
    knn = knn_monitor(config)
    monitors: list[RunMonitor] = [knn] if knn is not None else []
    if t.attention_every:
        monitors.append(AttentionDuringTraining(run_folder, config.data.crops.global_size, t.attention_every,
                                                t.attention_images))
    return monitors
