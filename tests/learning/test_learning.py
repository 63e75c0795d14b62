"""A short CPU pretraining must make the teacher's features measurably better than random init.

What DINO optimises is agreement between augmented views of one image. The test trains the
default preset for ``LEARNING_EPOCHS`` epochs on the package's sample, then, on 1,000 of the
sample's held-out images (never trained on), embeds two independently augmented global views
of each image with the teacher backbone ([CLS], L2-normalised) and ranks, for every first view,
all 1,000 second views by cosine similarity. The score is the mean percentile at which the
image's own second view ranks (50 = chance, 100 = always first). The same score for the same
network at random initialisation is the baseline.

Measured on a 2-core AMD EPYC (README, "The default run"): random init 70.55, after 2 epochs
78.34 (this test, 280 s); the assertion asks for half the measured gain (+3.9, rounded to 4). The weighted k-NN top-1 of
the same two networks on the held-out images is printed, not asserted: within a CPU test's
budget it moves by about a point (README), less than its noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dinossl.config import load_config
from dinossl.data.augment import MultiCropAugmentation
from dinossl.data.sample import load_sample
from dinossl.models import build_network
from dinossl.train import train

LEARNING_EPOCHS = 2
RANDOM_INIT_PERCENTILE = 70.55  # measured, see the module docstring
REQUIRED_GAIN = 4.0  # percentile points; half the measured gain of 7.79
QUERIES = 1000


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
def test_short_pretraining_makes_views_of_unseen_images_find_each_other(tmp_path: Path):
    torch.set_num_threads(2)
    config = load_config("vit-tiny-cifar", overrides=[
        f"train.epochs={LEARNING_EPOCHS}", "train.progress_bar=false", "train.knn_at_end=true"])
    first, second = _view_pairs(config)
    torch.manual_seed(config.train.seed)
    random_init = build_network(config.model, student=True).backbone
    result = train(config, tmp_path / "run")
    teacher = build_network(config.model, student=False).backbone
    teacher.load_state_dict(torch.load(result.exported[0], weights_only=True))

    random_score = partner_percentile(random_init, first, second)
    trained_score = partner_percentile(teacher, first, second)
    print(f"partner view percentile: trained {trained_score:.2f} vs random init {random_score:.2f}; "
          f"k-NN top-1 (k=20): trained {result.knn['trained']:.2f} vs random init {result.knn['random_init']:.2f}")
    assert abs(random_score - RANDOM_INIT_PERCENTILE) < 2.0, "the baseline moved: re-measure the thresholds"
    assert trained_score >= random_score + REQUIRED_GAIN
