"""The in-training k-NN check (one monitor, two data sources), and the scorer behind it.

* the built-in sample (``train.knn_every`` / ``train.knn_at_end`` when training on it): bank
  its 10,000 training images, queries its 2,000 held-out images, at the training's global
  crop size; the teacher (and with ``train.knn_student`` the student) every ``knn_every``
  epochs, and after training the teacher against its random initialisation and raw pixels;
* the user's labelled folder (``train.val_data``): bank its ``train/`` images, queries its
  ``val/`` (or ``test/``) images, center crops (bicubic resize to size * 256 / 224, crop
  ``size``); teacher and student every ``knn_every`` epochs and, with ``knn_at_end``, after
  training (the paper's Fig. 6 left for one's own run).

Both: weighted cosine k-NN, k = 20, T = 0.07, on the backbone's L2-normalised output (the
paper's protocol). :func:`knn_monitor` chooses the one a config asks for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from dinossl.config import Config
from dinossl.data import evaluation_transform, open_images
from dinossl.data.images import ImageSource
from dinossl.eval.baselines import UnitRangePixels
from dinossl.eval.classification.knn import knn_predictions, paired_bootstrap_interval
from dinossl.eval.classification.labelled_splits import open_splits
from dinossl.eval.features import extract_features
from dinossl.models import build_network
from dinossl.train.distiller import Distiller
from dinossl.train.trainer import MonitorReport

KNN_METRIC = "knn_top1_k20"
STUDENT_KNN_METRIC = "student_knn_top1_k20"
FOLDER_KNN_METRIC = "val_data_knn_top1_k20"


class KnnScorer:
    """Weighted k-NN top-1 of a backbone's features: ``bank`` images vote for each ``queries``
    image's class. ``device``: where features are computed (None: the backbone's)."""

    def __init__(self, bank: ImageSource, queries: ImageSource, transform: Callable,
                 device: Optional[torch.device] = None, k: int = 20, temperature: float = 0.07,
                 batch_size: int = 256, num_classes: Optional[int] = None) -> None:
        self.bank_source, self.query_source, self.transform = bank, queries, transform
        self.device, self.k, self.temperature, self.batch_size = device, k, temperature, batch_size
        self.num_classes = num_classes

    @torch.no_grad()
    def correct(self, backbone: nn.Module) -> torch.Tensor:
        """(queries,) bool: whether the weighted k-NN vote of ``backbone``'s features gets each
        query image's class right."""
        device = self.device if self.device is not None else next(backbone.parameters()).device
        bank, bank_labels = extract_features(backbone, self.bank_source, self.transform, self.batch_size, device)
        queries, query_labels = extract_features(backbone, self.query_source, self.transform, self.batch_size, device)
        num_classes = self.num_classes or int(max(bank_labels.max().item(), query_labels.max().item())) + 1
        predicted = knn_predictions(bank, bank_labels, queries, self.k, num_classes, self.temperature)
        return predicted.cpu() == query_labels.cpu().long()

    def top1(self, backbone: nn.Module) -> float:
        """Weighted k-NN top-1 (percent) of ``backbone`` on the query images."""
        correct = self.correct(backbone)
        return 100.0 * int(correct.sum()) / len(correct)


class SampleKnnMonitor(KnnScorer):
    """The scorer on the built-in sample; images are ``image_size`` px (the training global size)."""

    def __init__(self, image_size: int, device: torch.device, k: int = 20, temperature: float = 0.07) -> None:
        super().__init__(open_images(None, "train"), open_images(None, "heldout"),
                         evaluation_transform(resize=image_size, crop=image_size), device, k, temperature)


def folder_knn_scorer(folder: str | Path, image_size: int, batch_size: int = 128) -> KnnScorer:
    """The scorer on a labelled folder (train/ and val/ or test/, checked here): center crops
    of ``image_size`` after a bicubic resize to ``image_size`` * 256 / 224."""
    splits = open_splits(folder)
    return KnnScorer(splits.train, splits.val, evaluation_transform(resize=round(image_size * 256 / 224),
                                                                     crop=image_size),
                     batch_size=batch_size, num_classes=len(splits.classes))


def _percent(correct: torch.Tensor) -> float:
    return 100.0 * int(correct.sum()) / len(correct)


def knn_against_random_init(config: Config, teacher_backbone: nn.Module, monitor: SampleKnnMonitor,
                            student_backbone: Optional[nn.Module] = None) -> dict[str, Any]:
    """k-NN top-1 on the sample's held-out part: the trained teacher vs. the same network at its
    random initialisation (rebuilt from the run's seed, exactly as the run started), with a 95%
    paired bootstrap interval of the gain; vs. raw pixels in [0, 1] (``raw_pixels``) and with each
    image's mean subtracted (``raw_pixels_mean_subtracted``, the stronger baseline; the
    teacher's margin over it with its interval in ``margin_over_pixels_ci95``); with
    ``student_backbone``, the student's too (``student``, ``student_gain_ci95``)."""
    torch.manual_seed(config.train.seed)
    random_init = build_network(config.model, student=True).backbone.to(monitor.device)
    random_correct, trained_correct = monitor.correct(random_init), monitor.correct(teacher_backbone)
    pixels_correct = monitor.correct(UnitRangePixels().to(monitor.device))
    centred_correct = monitor.correct(UnitRangePixels(mean_subtracted=True).to(monitor.device))
    low, high = paired_bootstrap_interval(trained_correct, random_correct)
    results: dict[str, Any] = {"random_init": _percent(random_correct), "trained": _percent(trained_correct),
                               "gain_ci95": [low, high], "raw_pixels": _percent(pixels_correct),
                               "raw_pixels_mean_subtracted": _percent(centred_correct),
                               "margin_over_pixels_ci95": list(paired_bootstrap_interval(trained_correct, centred_correct))}
    if student_backbone is not None:
        student_correct = monitor.correct(student_backbone)
        results["student"] = _percent(student_correct)
        results["student_gain_ci95"] = list(paired_bootstrap_interval(student_correct, random_correct))
    return {**results, "bank_images": len(monitor.bank_source), "query_images": len(monitor.query_source)}


class KnnDuringTraining:
    """The trainer's k-NN monitor, on the built-in sample (``folder`` None) or on a labelled
    folder (``train.val_data``): every ``every`` epochs (0: never) and, with ``at_end``, after
    training. On the sample the student is scored with ``student``; after training the teacher
    is compared with its random initialisation (needs ``config``). On a folder, teacher and
    student are scored each time."""

    def __init__(self, config: Config, every: int = 0, at_end: bool = False, student: bool = False,
                 folder: Optional[str] = None) -> None:
        self.config, self.every, self.at_end, self.folder = config, every, at_end, folder
        self.student = student or folder is not None
        self._scorer: Optional[KnnScorer] = None
        if folder is not None:  # checked when the run starts
            self._scorer = folder_knn_scorer(folder, config.data.crops.global_size)

    def _sample(self, distiller: Distiller) -> KnnScorer:
        """The scorer; on the sample, made on the teacher's device (and the sample decoded) on first use."""
        if self._scorer is None:
            device = next(distiller.teacher.parameters()).device
            self._scorer = SampleKnnMonitor(self.config.data.crops.global_size, device)
        return self._scorer

    def _folder_report(self, epoch: Optional[int], distiller: Distiller) -> MonitorReport:
        scorer = self._sample(distiller)
        teacher, student = scorer.top1(distiller.teacher.backbone), scorer.top1(distiller.student.backbone)
        record: dict[str, Any] = {"kind": "knn", "source": "val_data", "teacher_knn_top1": teacher,
                                  "student_knn_top1": student, "k": scorer.k,
                                  "bank_images": len(scorer.bank_source), "query_images": len(scorer.query_source)}
        if epoch is not None:
            record["epoch"] = epoch
        when = f"epoch {epoch}" if epoch is not None else "after training"
        return MonitorReport(record, f"{when}: k-NN top-1 on {scorer.query_source.root}: teacher {teacher:.1f}%, "
                                     f"student {student:.1f}%")

    def after_epoch(self, epoch: int, distiller: Distiller) -> Optional[MonitorReport]:
        if not self.every or epoch % self.every:
            return None
        if self.folder is not None:
            return self._folder_report(epoch, distiller)
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
        if self.folder is not None:
            report = self._folder_report(None, distiller)
            return MonitorReport({**report.record, "kind": "result", "metric": FOLDER_KNN_METRIC,
                                  "folder": self.folder}, report.message)
        results = knn_against_random_init(self.config, distiller.teacher.backbone, self._sample(distiller),
                                          distiller.student.backbone if self.student else None)
        return MonitorReport({"kind": "result", "metric": KNN_METRIC, **results})

    @staticmethod
    def summary(record: dict[str, Any]) -> str:
        """The line ``dino train`` prints for an after-training record of either source."""
        if record.get("metric") == FOLDER_KNN_METRIC:
            return (f"k-NN top-1 (k=20, T=0.07) on {record['folder']}: teacher {record['teacher_knn_top1']:.2f}%, "
                    f"student {record['student_knn_top1']:.2f}%")
        return sample_summary(record)


def sample_summary(record: dict[str, Any]) -> str:
    """The line ``dino train`` prints for the sample check's after-training record."""
    low, high = record["gain_ci95"]
    gain = record["trained"] - record["random_init"]
    line = (f"k-NN top-1 (k=20, T=0.07) on the held-out sample: trained teacher {record['trained']:.2f}% "
            f"vs. random init {record['random_init']:.2f}% (gain {gain:+.2f} points, "
            f"95% bootstrap interval {low:+.2f} to {high:+.2f})")
    if "raw_pixels_mean_subtracted" in record:
        centred = record["raw_pixels_mean_subtracted"]
        p_low, p_high = record["margin_over_pixels_ci95"]
        line += (f" vs. raw pixels {centred:.2f}% (each image's mean subtracted; {record['raw_pixels']:.2f}% "
                 f"as they are; margin {record['trained'] - centred:+.2f} points, {p_low:+.2f} to {p_high:+.2f})")
    if "student" in record:
        s_low, s_high = record["student_gain_ci95"]
        line += (f"; student {record['student']:.2f}% (gain {record['student'] - record['random_init']:+.2f}, "
                 f"{s_low:+.2f} to {s_high:+.2f})")
    return line


def knn_monitor(config: Config) -> Optional[KnnDuringTraining]:
    """The k-NN monitor the config asks for: on ``train.val_data`` when it is set; else, with
    ``train.knn_every`` / ``train.knn_at_end``, on the built-in sample (``train.knn_student``:
    the student too) when the run trains on it; None otherwise (the sample check needs the
    sample's labels)."""
    t = config.train
    if t.val_data is not None:
        return KnnDuringTraining(config, t.knn_every, t.knn_at_end, folder=t.val_data)
    if not (t.knn_at_end or t.knn_every) or config.data.path is not None:
        return None
    return KnnDuringTraining(config, every=t.knn_every, at_end=t.knn_at_end, student=t.knn_student)
