import json

import torch

from dinossl.eval.classification.knn_monitor import (
    KNN_METRIC,
    STUDENT_KNN_METRIC,
    KnnDuringTraining,
    SampleKnnMonitor,
    knn_against_random_init,
)
from dinossl.train import build_run, train
from tests.train.test_trainer import tiny_config


def _cheap(monitor: SampleKnnMonitor, queries: int = 300, bank: int | None = None) -> SampleKnnMonitor:
    """``queries`` held-out images (and ``bank`` bank images), every n-th: the sample is ordered by
    class, so its first images would be one or two classes only."""
    for source, count in ((monitor.query_source, queries), (monitor.bank_source, bank)):
        if count is not None:
            step = len(source) // count
            source.pixels, source.labels = source.pixels[::step][:count], source.labels[::step][:count]
    return monitor


def test_knn_against_random_init_reports_a_bootstrap_interval(tmp_path, tiny_image_folder):
    config = tiny_config(tiny_image_folder)
    run = build_run(config, tmp_path / "run")
    monitor = _cheap(SampleKnnMonitor(32, torch.device("cpu")))
    result = knn_against_random_init(config, run.distiller.teacher.backbone, monitor)  # still its random init
    assert result["trained"] == result["random_init"] and result["gain_ci95"] == [0.0, 0.0]
    assert 15.0 < result["random_init"] < 45.0  # 10 classes: well above chance for the sample
    assert result["query_images"] == 300
    assert 0.0 < result["raw_pixels"] < result["raw_pixels_mean_subtracted"] < 100.0
    low, high = result["margin_over_pixels_ci95"]
    assert low <= result["trained"] - result["raw_pixels_mean_subtracted"] <= high
    line = KnnDuringTraining.summary(result)
    assert f"vs. raw pixels {result['raw_pixels_mean_subtracted']:.2f}% (each image's mean subtracted" in line
    assert f"{result['raw_pixels']:.2f}% as they are" in line


def test_the_trainer_logs_what_the_monitor_reports(tmp_path, tiny_image_folder):
    config = tiny_config(tiny_image_folder)
    monitor = KnnDuringTraining(config, every=1, at_end=True)
    monitor._scorer = _cheap(SampleKnnMonitor(32, torch.device("cpu")), 200)
    result = train(config, tmp_path / "run", monitors=[monitor])
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    per_epoch = [r for r in records if r["kind"] == "knn"]
    assert [r["epoch"] for r in per_epoch] == list(range(1, config.train.epochs + 1))
    final = [r for r in records if r["kind"] == "result"]
    assert len(final) == 1 and final[0]["metric"] == KNN_METRIC and result.reports == final
    assert "trained teacher" in KnnDuringTraining.summary(final[0])


def test_the_student_is_scored_beside_the_teacher(tmp_path, tiny_image_folder):
    config = tiny_config(tiny_image_folder, "train.knn_student=true")
    monitor = KnnDuringTraining(config, every=1, at_end=True, student=config.train.knn_student)
    scorer = monitor._scorer = _cheap(SampleKnnMonitor(32, torch.device("cpu")), 200, bank=1000)
    result = train(config, tmp_path / "run", monitors=[monitor])
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    per_epoch = [r for r in records if r["kind"] == "knn"]
    assert [r["epoch"] for r in per_epoch] == [1]
    assert all(0 <= r[STUDENT_KNN_METRIC] <= 100 and 0 <= r[KNN_METRIC] <= 100 for r in per_epoch)
    final = result.reports[0]
    # Scored again from the networks the run left behind: the same numbers, teacher and student apart.
    resumed = build_run(config, tmp_path / "run")
    assert final["trained"] == scorer.top1(resumed.distiller.teacher.backbone) == per_epoch[0][KNN_METRIC]
    assert final["student"] == scorer.top1(resumed.distiller.student.backbone) == per_epoch[0][STUDENT_KNN_METRIC]
    assert len(final["student_gain_ci95"]) == 2 and "student" in KnnDuringTraining.summary(final)
    assert resumed.distiller.student.training  # scoring put it back in training mode


class MeanSubtractedPixels(torch.nn.Module):
    """Features that beat a random-init ViT: each image's normalised pixels, its mean subtracted."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.flatten(1)
        return pixels - pixels.mean(dim=1, keepdim=True)


def test_the_gain_is_the_given_teacher_against_the_network_the_run_started_from(tiny_image_folder):
    """Given a teacher other than the run's initial network (here: pixel features), the report
    scores that teacher, and as random init the network rebuilt from the run's seed, each equal to
    a direct scoring; the gain's interval holds their difference and lies above zero."""
    from dinossl.models import build_network

    config = tiny_config(tiny_image_folder)
    monitor = _cheap(SampleKnnMonitor(32, torch.device("cpu")), 300, bank=2000)
    torch.manual_seed(config.train.seed)
    started_from = build_network(config.model, student=True).backbone
    result = knn_against_random_init(config, MeanSubtractedPixels(), monitor)
    assert result["random_init"] == monitor.top1(started_from)
    assert result["trained"] == monitor.top1(MeanSubtractedPixels())
    gain = result["trained"] - result["random_init"]
    low, high = result["gain_ci95"]
    # measured (2-core x86 CPU): random init 25.67 %, pixels 33.67 %, gain +8.00 (interval +1.67 to +14.33)
    assert 0.0 < low <= gain <= high
