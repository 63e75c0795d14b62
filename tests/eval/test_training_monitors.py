"""The one place that chooses a training run's monitors (dino train and dino study)."""

from __future__ import annotations

from dinossl.config import load_config
from dinossl.eval.attention.training_snapshots import AttentionDuringTraining
from dinossl.eval.classification.knn_monitor import KnnDuringTraining
from dinossl.eval.training_monitors import training_monitors


def _config(*overrides: str):
    return load_config(overrides=list(overrides))


def test_nothing_asked_nothing_monitored(tmp_path):
    assert training_monitors(_config("train.knn_every=0", "train.knn_at_end=false"), tmp_path) == []


def test_the_sample_check_when_training_on_the_sample(tmp_path):
    (knn,) = training_monitors(_config("train.knn_every=2", "train.knn_student=true"), tmp_path)
    assert isinstance(knn, KnnDuringTraining) and knn.folder is None and knn.every == 2 and knn.student


def test_no_sample_check_on_other_images(tmp_path, cifar10_small):
    config = _config("train.knn_every=2", f"data.path={cifar10_small / 'train'}")
    assert training_monitors(config, tmp_path) == []


def test_val_data_scores_teacher_and_student_and_attention_snapshots_follow(tmp_path, cifar10_small):
    config = _config(f"train.val_data={cifar10_small}", "train.knn_every=1", "train.attention_every=3")
    knn, attention = training_monitors(config, tmp_path)
    assert isinstance(knn, KnnDuringTraining) and knn.folder == str(cifar10_small) and knn.student
    assert len(knn._scorer.bank_source) == 500 and len(knn._scorer.query_source) == 100
    assert isinstance(attention, AttentionDuringTraining)
