"""Linear probe: separable toy sets are learned, settings and feature choices are the protocol's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dinossl.data.images import ArrayImages
from dinossl.errors import DinoError
from dinossl.eval.baselines import RawPixels
from dinossl.eval.classification.labelled_splits import LabelledSplits
from dinossl.eval.classification.linear import LinearClassifier, LinearSettings, loader_batches, train_linear_classifier
from dinossl.eval.classification.protocols import ImageSettings, default_spec, linear_protocol
from dinossl.eval.classification.supervised import summarise, training_loader
from dinossl.models import build_vit
from dinossl.runtime.distributed import DistContext

CPU = DistContext(0, 1, 0, torch.device("cpu"))




def blobs(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 Gaussian classes in 16-D, centres 4 units apart along separate axes, unit noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(per_class)
    centres = torch.zeros(4, 16)
    centres[torch.arange(4), torch.arange(4)] = 4.0
    return centres[labels] + 0.5 * torch.randn(len(labels), 16, generator=generator), labels


def test_separable_features_are_classified_almost_perfectly():
    train_x, train_y = blobs(100, seed=0)
    val_x, val_y = blobs(50, seed=1)
    settings = LinearSettings(epochs=15, base_lr=0.5, batch_size=32, eval_every=5)
    loader = training_loader(TensorDataset(train_x, train_y), settings.batch_size, CPU, seed=0, collate=None)
    classifier, history = train_linear_classifier(loader_batches(loader, CPU.device), len(loader), val_x, val_y, 4, settings)
    assert [entry["epoch"] for entry in history if "top1" in entry] == [5, 10, 15]
    assert history[-1]["top1"] >= 99.0
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["lr"] < 1e-3 * settings.lr  # cosine decayed to ~0
    assert (classifier(val_x).argmax(1) == val_y).float().mean() >= 0.99


def test_linear_probe_on_images_learns_colour_classes():
    rng = np.random.default_rng(0)

    def colours(per_class: int) -> ArrayImages:
        labels = np.repeat(np.arange(3), per_class)
        pixels = rng.integers(0, 60, (len(labels), 16, 16, 3)).astype(np.uint8)
        pixels[np.arange(len(labels)), :, :, labels] += 180  # red, green or blue
        return ArrayImages(pixels, labels, ["red", "green", "blue"])

    splits = LabelledSplits(colours(20), colours(10))
    settings = LinearSettings(epochs=4, base_lr=0.05, batch_size=16)
    results = linear_protocol(RawPixels(), splits, ImageSettings(resize=16, crop=16, batch_size=32, num_workers=0),
                              settings, default_spec(RawPixels()), CPU)
    assert results["feature_dim"] == 3 * 16 * 16
    assert results["last"]["top1"] == 100.0 and results["best"]["top1"] == 100.0
    assert len(results["history"]) == 4


def test_protocol_settings_and_features():
    assert LinearSettings(batch_size=1024).lr == pytest.approx(0.004)
    with pytest.raises(DinoError):
        LinearSettings(epochs=0)
    classifier = LinearClassifier(500, 7)
    assert classifier.linear.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.count_nonzero(classifier.linear.bias) == 0
    deep, shallow = build_vit("vit_tiny", patch_size=8, img_size=32, depth=5), build_vit("vit_tiny", patch_size=8, img_size=32, depth=2)
    assert (default_spec(deep).n_last_blocks, default_spec(shallow).n_last_blocks) == (4, 2)
    assert default_spec(deep, avgpool=True) == type(default_spec(deep))(1, True)
    assert default_spec(RawPixels()).n_last_blocks == 1
    with pytest.raises(DinoError):
        default_spec(shallow, n_last_blocks=3)


def test_summary_reports_last_and_earliest_best_epoch():
    history = [{"epoch": 1, "top1": 50.0, "top5": 90.0}, {"epoch": 2}, {"epoch": 3, "top1": 70.0, "top5": 95.0},
               {"epoch": 4, "top1": 70.0, "top5": 96.0}, {"epoch": 5, "top1": 60.0, "top5": 97.0}]
    assert summarise(history) == {"last": {"epoch": 5, "top1": 60.0, "top5": 97.0},
                                  "best": {"epoch": 3, "top1": 70.0, "top5": 95.0}}
