"""k-NN accuracy of the teacher (and, when asked, the student) on the built-in sample, during and
after training.

Bank: the sample's 10,000 training images; queries: its 2,000 held-out images; cosine k-NN
with k = 20 and T = 0.07 on the backbone's L2-normalised output (the paper's protocol).
:class:`SampleKnnDuringTraining` is the monitor ``dino train`` hands to the trainer.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from dinossl.config import Config
from dinossl.data import evaluation_transform, open_images
from dinossl.eval.classification.knn import knn_predictions, paired_bootstrap_interval
from dinossl.eval.features import extract_features
from dinossl.models import build_network
from dinossl.train.distiller import Distiller
from dinossl.train.trainer import MonitorReport

KNN_METRIC = "knn_top1_k20"
STUDENT_KNN_METRIC = "student_knn_top1_k20"


class SampleKnnMonitor:
    """Scores backbones on the sample; images are ``image_size`` px (the training global size)."""

    def __init__(self, image_size: int, device: torch.device, k: int = 20, temperature: float = 0.07) -> None:
        self.bank_source, self.query_source = open_images(None, "train"), open_images(None, "heldout")
        self.transform = evaluation_transform(resize=image_size, crop=image_size)
        self.device, self.k, self.temperature = device, k, temperature

    @torch.no_grad()
    def correct(self, backbone: nn.Module) -> torch.Tensor:
        """(queries,) bool: whether the weighted k-NN vote of ``backbone``'s features gets each
        held-out image's class right."""
        bank, bank_labels = extract_features(backbone, self.bank_source, self.transform, device=self.device)
        queries, query_labels = extract_features(backbone, self.query_source, self.transform, device=self.device)
        num_classes = int(max(bank_labels.max().item(), query_labels.max().item())) + 1
        predicted = knn_predictions(bank, bank_labels, queries, self.k, num_classes, self.temperature)
        return predicted.cpu() == query_labels.cpu().long()

    def top1(self, backbone: nn.Module) -> float:
        """Weighted k-NN top-1 (percent) of ``backbone`` on the held-out images."""
        correct = self.correct(backbone)
        return 100.0 * int(correct.sum()) / len(correct)


def _percent(correct: torch.Tensor) -> float:
    return 100.0 * int(correct.sum()) / len(correct)


def knn_against_random_init(config: Config, teacher_backbone: nn.Module, monitor: SampleKnnMonitor,
                            student_backbone: Optional[nn.Module] = None) -> dict[str, Any]:
    """k-NN top-1 on the sample's held-out part: the trained teacher vs. the same network at its
    random initialisation (rebuilt from the run's seed, exactly as the run started), with a 95%
    paired bootstrap interval of the gain; with ``student_backbone``, the student's too
    (``student``, ``student_gain_ci95``)."""
    torch.manual_seed(config.train.seed)
    random_init = build_network(config.model, student=True).backbone.to(monitor.device)
    random_correct, trained_correct = monitor.correct(random_init), monitor.correct(teacher_backbone)
    low, high = paired_bootstrap_interval(trained_correct, random_correct)
    results: dict[str, Any] = {"random_init": _percent(random_correct), "trained": _percent(trained_correct),
                               "gain_ci95": [low, high]}
    if student_backbone is not None:
        student_correct = monitor.correct(student_backbone)
        results["student"] = _percent(student_correct)
        results["student_gain_ci95"] = list(paired_bootstrap_interval(student_correct, random_correct))
    return {**results, "bank_images": len(monitor.bank_source), "query_images": len(monitor.query_source)}


class SampleKnnDuringTraining:
    """The trainer's monitor: teacher k-NN on the held-out sample every ``every`` epochs (0: never)
    and, with ``at_end``, the trained teacher against its random initialisation; with
    ``student``, the student is scored beside the teacher each time (paper, Fig. 6 left)."""

    def __init__(self, config: Config, every: int = 0, at_end: bool = False, student: bool = False) -> None:
        self.config, self.every, self.at_end, self.student = config, every, at_end, student
        self._scorer: Optional[SampleKnnMonitor] = None

    def _sample(self, distiller: Distiller) -> SampleKnnMonitor:
        """The sample scorer on the teacher's device, made (and the sample decoded) on first use."""
        if self._scorer is None:
            device = next(distiller.teacher.parameters()).device
            self._scorer = SampleKnnMonitor(self.config.data.crops.global_size, device)
        return self._scorer

    def after_epoch(self, epoch: int, distiller: Distiller) -> Optional[MonitorReport]:
        if not self.every or epoch % self.every:
            return None
        scorer = self._sample(distiller)
        top1 = scorer.top1(distiller.teacher.backbone)
        record: dict[str, Any] = {"kind": "knn", "epoch": epoch, KNN_METRIC: top1}
        message = f"epoch {epoch}: teacher k-NN top-1 on the held-out sample {top1:.1f}%"
        if self.student:
            record[STUDENT_KNN_METRIC] = scorer.top1(distiller.student.backbone)
            message += f", student {record[STUDENT_KNN_METRIC]:.1f}%"
        return MonitorReport(record, message)

    def after_training(self, distiller: Distiller) -> Optional[MonitorReport]:
        if not self.at_end:
            return None
        results = knn_against_random_init(self.config, distiller.teacher.backbone, self._sample(distiller),
                                          distiller.student.backbone if self.student else None)
        return MonitorReport({"kind": "result", "metric": KNN_METRIC, **results})

    @staticmethod
    def summary(record: dict[str, Any]) -> str:
        """The line ``dino train`` prints for the after-training record."""
        low, high = record["gain_ci95"]
        gain = record["trained"] - record["random_init"]
        line = (f"k-NN top-1 (k=20, T=0.07) on the held-out sample: trained teacher {record['trained']:.2f}% "
                f"vs. random init {record['random_init']:.2f}% (gain {gain:+.2f} points, "
                f"95% bootstrap interval {low:+.2f} to {high:+.2f})")
        if "student" in record:
            s_low, s_high = record["student_gain_ci95"]
            line += (f"; student {record['student']:.2f}% (gain {record['student'] - record['random_init']:+.2f}, "
                     f"{s_low:+.2f} to {s_high:+.2f})")
        return line


def sample_knn_monitor(config: Config) -> Optional[SampleKnnDuringTraining]:
    """The k-NN monitor ``train.knn_every`` / ``train.knn_at_end`` / ``train.knn_student`` ask for;
    None when they ask for nothing or the run trains on its own images (the check needs the
    built-in sample's labels)."""
    t = config.train
    if not (t.knn_at_end or t.knn_every) or config.data.path is not None:
        return None
    return SampleKnnDuringTraining(config, every=t.knn_every, at_end=t.knn_at_end, student=t.knn_student)
