"""k-NN accuracy of teacher and student on the user's labelled data during training
(``train.val_data``, every ``train.knn_every`` epochs): the paper's Fig. 6 (left) for one's own run.

Bank: the folder's ``train/`` images; queries: its ``val/`` (or ``test/``) images; weighted
cosine k-NN, k = 20, T = 0.07, on the backbones' L2-normalised output features of center crops
(bicubic resize to size * 256 / 224, center crop ``size``, the training's global crop size).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from dinossl.data import evaluation_transform
from dinossl.eval.classification.knn import knn_predictions
from dinossl.eval.classification.labelled_splits import LabelledSplits, open_splits
from dinossl.eval.features import extract_features
from dinossl.train.distiller import Distiller
from dinossl.train.trainer import MonitorReport

FOLDER_KNN_METRIC = "val_data_knn_top1_k20"


class FolderKnnDuringTraining:
    """The trainer's monitor for ``train.val_data``: teacher and student k-NN top-1 (percent)
    every ``every`` epochs (0: never) and, with ``at_end``, after training."""

    def __init__(self, folder: str, image_size: int, every: int = 0, at_end: bool = False, k: int = 20,
                 temperature: float = 0.07, batch_size: int = 128) -> None:
        self.splits: LabelledSplits = open_splits(folder)  # checked when the run starts
        self.transform = evaluation_transform(resize=round(image_size * 256 / 224), crop=image_size)
        self.every, self.at_end, self.k, self.temperature, self.batch_size = every, at_end, k, temperature, batch_size

    @torch.no_grad()
    def top1(self, backbone: nn.Module) -> float:
        """Weighted k-NN top-1 (percent) of ``backbone``'s features on the val images."""
        device = next(backbone.parameters()).device
        bank, bank_labels = extract_features(backbone, self.splits.train, self.transform, self.batch_size, device)
        queries, labels = extract_features(backbone, self.splits.val, self.transform, self.batch_size, device)
        predicted = knn_predictions(bank, bank_labels, queries, self.k, len(self.splits.classes), self.temperature)
        return 100.0 * float((predicted.cpu() == labels.long()).float().mean())

    def _report(self, epoch: Optional[int], distiller: Distiller) -> MonitorReport:
        teacher, student = self.top1(distiller.teacher.backbone), self.top1(distiller.student.backbone)
        record: dict[str, Any] = {"kind": "knn", "source": "val_data", "teacher_knn_top1": teacher,
                                  "student_knn_top1": student, "k": self.k,
                                  "bank_images": len(self.splits.train), "query_images": len(self.splits.val)}
        if epoch is not None:
            record["epoch"] = epoch
        when = f"epoch {epoch}" if epoch is not None else "after training"
        return MonitorReport(record, f"{when}: k-NN top-1 on {self.splits.val.root}: teacher {teacher:.1f}%, "
                                     f"student {student:.1f}%")

    def after_epoch(self, epoch: int, distiller: Distiller) -> Optional[MonitorReport]:
        if not self.every or epoch % self.every:
            return None
        return self._report(epoch, distiller)

    def after_training(self, distiller: Distiller) -> Optional[MonitorReport]:
        if not self.at_end:
            return None
        report = self._report(None, distiller)
        return MonitorReport({**report.record, "kind": "result", "metric": FOLDER_KNN_METRIC}, report.message)
