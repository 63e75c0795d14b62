"""A short CPU pretraining must make the teacher's features measurably better than random init.

The test trains its own run (``learning_run.yaml``: the vit-tiny-cifar preset's settings when
the figures below were measured) for ``LEARNING_EPOCHS`` epochs on the package's CIFAR-10
sample and checks two things against the same network at its random initialisation:

1. k-NN: the weighted k-NN top-1 (k = 20, T = 0.07) of the teacher's [CLS] on the sample's
   2,000 held-out images, bank = its 10,000 training images (what ``dino train`` prints), and
   its margin over the same k-NN on raw pixels with each image's mean subtracted.
2. View retrieval, what DINO optimises: on 1,000 held-out images (never trained on), two
   independently augmented global views of each image are embedded ([CLS], L2-normalised) and,
   for every first view, all 1,000 second views are ranked by cosine similarity. The score is
   the mean percentile at which the image's own second view ranks (50 = chance, 100 = first).

Measured on a 2-core AMD EPYC with AVX512-BF16, no GPU (4 epochs in bf16 autocast, which
``train.precision=auto`` picks there; deterministic on one machine), with the reference's
schedules, position embeddings and [CLS] initialisation: k-NN 29.10 % at random init, 31.75 %
trained (+2.65; 95 % bootstrap interval of the gain +0.25 to +5.10); view retrieval 60.55 at
random init, 74.06 trained (+13.51). On a 2-core AMD EPYC with AVX2 only (fp32, no bf16): k-NN
29.10 -> 31.65 % (+2.55; interval +0.15 to +4.95), view retrieval 60.55 -> 74.26, 7 min 27 s.
The k-NN assertion asks for +2.0 points, below both measured gains by about half a point of
rounding (an assertion of +1.0 sat within one point of random init); view retrieval asks for
+6.5 percentile points, about half its gain. About 2 minutes on 2 idle cores with bf16
(``python -m pytest -q -s -m slow tests/learning`` prints the figures).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dinossl.config import load_config
from dinossl.data.augment import MultiCropAugmentation
from dinossl.data.sample import load_sample
from dinossl.eval.classification.knn_monitor import KnnDuringTraining
from dinossl.models import build_network
from dinossl.train import train

LEARNING_RUN = Path(__file__).with_name("learning_run.yaml")  # the test's own settings, not the default preset's
LEARNING_EPOCHS = 4
RANDOM_INIT_PERCENTILE = 60.55  # measured, see the module docstring
REQUIRED_GAIN = 6.5  # percentile points; about half the measured gain
KNN_REQUIRED_GAIN = 2.0  # k-NN top-1 points; measured +2.65 (bf16) and +2.55 (fp32), see the module docstring
QUERIES = 1000
# Trained teacher minus the mean-subtracted raw-pixel baseline (40.85 % on the sample), after the
# shortened run: measured -9.10 (31.75 %); the assertion allows 2.5 points of rounding and
# machine differences. After 4 epochs the teacher is still BELOW pixels: this guards the margin
# against regressions, it does not claim the full run's (docs/training.md#the-default-run).
KNN_PIXEL_MARGIN = -11.6


def _view_pairs(config) -> tuple[torch.Tensor, torch.Tensor]:
    """Two global views of each of the first QUERIES held-out images: (QUERIES, 3, 32, 32) each."""
    heldout = load_sample("heldout")
    augment = MultiCropAugmentation(config.data.crops)
    torch.manual_seed(0)
    pairs = [augment(heldout.load(i)[0])[:2] for i in range(QUERIES)]
    return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


@torch.no_grad()
def partner_percentile(backbone: torch.nn.Module, first: torch.Tensor, second: torch.Tensor) -> float:
    """Mean percentile (0-100) at which view ``second[i]`` ranks among all ``second`` for ``first[i]``."""
    backbone.eval()
    a = F.normalize(backbone(first), dim=1)
    b = F.normalize(backbone(second), dim=1)
    similarity = a @ b.T  # (Q, Q)
    partner = similarity.diagonal().unsqueeze(1)
    beaten = (similarity < partner).sum(dim=1).float() / (len(first) - 1)
    return beaten.mean().item() * 100


def test_partner_percentile_is_100_for_identical_views_and_50_for_unrelated():
    identity = torch.nn.Flatten()
    views = torch.randn(200, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert partner_percentile(identity, views, views) == pytest.approx(100.0)
    unrelated = torch.randn(200, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    assert 40.0 < partner_percentile(identity, views, unrelated) < 60.0


@pytest.mark.slow
def test_short_pretraining_lifts_knn_and_view_retrieval_over_random_init(tmp_path: Path):
    torch.set_num_threads(2)
    config = load_config(yaml_path=LEARNING_RUN, overrides=[
        f"train.epochs={LEARNING_EPOCHS}", "train.progress_bar=false", "train.knn_at_end=true"])
    first, second = _view_pairs(config)
    torch.manual_seed(config.train.seed)
    random_init = build_network(config.model, student=True).backbone
    result = train(config, tmp_path / "run", monitors=[KnnDuringTraining(config, at_end=True)])
    teacher = build_network(config.model, student=False).backbone
    teacher.load_state_dict(torch.load(result.exported[0], weights_only=True))

    random_score = partner_percentile(random_init, first, second)
    trained_score = partner_percentile(teacher, first, second)
    knn = result.reports[0]
    print(f"partner view percentile: trained {trained_score:.2f} vs random init {random_score:.2f}; "
          f"k-NN top-1 (k=20): trained {knn['trained']:.2f} vs random init {knn['random_init']:.2f} "
          f"(95% interval of the gain {knn['gain_ci95'][0]:+.2f} to {knn['gain_ci95'][1]:+.2f})")
    assert abs(random_score - RANDOM_INIT_PERCENTILE) < 2.0, "the baseline moved: re-measure the thresholds"
    assert trained_score >= random_score + REQUIRED_GAIN
    assert knn["trained"] >= knn["random_init"] + KNN_REQUIRED_GAIN
    margin = knn["trained"] - knn["raw_pixels_mean_subtracted"]
    print(f"k-NN against raw pixels: {knn['raw_pixels_mean_subtracted']:.2f}% mean-subtracted, "
          f"{knn['raw_pixels']:.2f}% as they are; margin of the trained teacher {margin:+.2f}")
    assert margin >= KNN_PIXEL_MARGIN
