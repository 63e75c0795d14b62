"""k-NN accuracy of the teacher on the built-in sample, during and after training.

Bank: the sample's 10,000 training images; queries: its 2,000 held-out images; cosine k-NN
with k = 20 and T = 0.07 on the backbone's L2-normalised output (the paper's protocol).
"""

from __future__ import annotations

import torch
from torch import nn

from dinossl.data import evaluation_transform, open_images


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
        from dinossl.eval.features import extract_features
        from dinossl.eval.classification.knn import knn_predictions

        bank, bank_labels = extract_features(backbone, self.bank_source, self.transform, device=self.device)
        queries, query_labels = extract_features(backbone, self.query_source, self.transform, device=self.device)
        num_classes = int(max(bank_labels.max().item(), query_labels.max().item())) + 1
        predicted = knn_predictions(bank, bank_labels, queries, self.k, num_classes, self.temperature)
        return predicted.cpu() == query_labels.cpu().long()

    def top1(self, backbone: nn.Module) -> float:
        """Weighted k-NN top-1 (percent) of ``backbone`` on the held-out images."""
        correct = self.correct(backbone)
        return 100.0 * int(correct.sum()) / len(correct)
